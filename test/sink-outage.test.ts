import t from 'tap'
import { databaseOutageUnderLoad } from './harness/outage.ts'

// the one-minute version runs in make test-chaos (test/chaos/sink-outage.test.ts)
t.test('the database down for 5 s under load: the sinks wait and resume, nothing lost or doubled', async (t) => {
  await databaseOutageUnderLoad(t, 5_000)
})
