import t from 'tap'
import { databaseOutageUnderLoad } from '../harness/outage.ts'

t.test('the database down for a minute under load', { skip: process.env.SEGSTREAM_CHAOS ? false : 'set SEGSTREAM_CHAOS=1 (make test-chaos)', timeout: 600_000 }, async (t) => {
  await databaseOutageUnderLoad(t, 60_000)
})
