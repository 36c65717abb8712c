import type { AudienceUser } from '../../store/funnels.ts'
import { USER_FIELDS } from '../../store/explore.ts'
import { csvField } from '../explore/csv.ts'

/** An audience's columns: the profile's (as the exploration CSV), the status, then one time per step reached. */
export function audienceCsvHeader(level: number): string {
  return `${[...USER_FIELDS, 'status', ...Array.from({ length: level }, (_, i) => `step${i + 1}Time`)].join(',')}\r\n`
}

export function audienceCsvRows(users: readonly AudienceUser[]): string {
  let out = ''
  for (const user of users) out += `${[...USER_FIELDS.map((field) => user[field]), user.status, ...user.stepTimes].map(csvField).join(',')}\r\n`
  return out
}
