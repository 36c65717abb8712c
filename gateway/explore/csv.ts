import { USER_FIELDS, type UserRow } from '../../store/explore.ts'

/** A CSV field (RFC 4180): quoted when it holds a comma, a quote or a line break. */
export function csvField(value: unknown): string {
  if (value === null || value === undefined) return ''
  const text = typeof value === 'object' ? JSON.stringify(value) : String(value)
  return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text
}

export const CSV_HEADER = `${USER_FIELDS.join(',')}\r\n`

/** Rows of listed users, traits as one JSON column. */
export function csvRows(users: readonly UserRow[]): string {
  let out = ''
  for (const user of users) out += `${USER_FIELDS.map((field) => csvField(user[field])).join(',')}\r\n`
  return out
}
