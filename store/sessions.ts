import type pg from 'pg'

type Query = <R extends pg.QueryResultRow>(text: string, values?: unknown[]) => Promise<pg.QueryResult<R>>

/** One row of the sessions table. Times are ms since the epoch. */
export interface SessionRow {
  project: string
  sessionId: string
  canonicalId: string
  startedAt: number
  lastEventAt: number
  durationMs: number
  events: number
  pages: number
  entryPage: string | null
  exitPage: string | null
  channel: string | null
  device: string | null
  firstMessageId: string
  status: '$session_start' | '$session_end' | '$session_retract'
  version: number
  sessionsSeq: number
}

/** An identity link: events counted under `anonymousId` now belong to `userId`. */
export interface IdentityLink {
  project: string
  anonymousId: string
  userId: string
  linkedAt: number
}

const SESSION_COLUMNS = [
  ['project', 'text'], ['session_id', 'text'], ['canonical_id', 'text'], ['started_at', 'timestamptz'], ['last_event_at', 'timestamptz'],
  ['duration_ms', 'bigint'], ['events', 'int'], ['pages', 'int'], ['entry_page', 'text'], ['exit_page', 'text'], ['channel', 'text'],
  ['device', 'text'], ['first_message_id', 'text'], ['status', 'text'], ['version', 'int'], ['sessions_seq', 'bigint'],
] as const
const names = SESSION_COLUMNS.map(([column]) => column).join(', ')
// DISTINCT ON keeps the newest version of a session that appears twice in one batch
// a session of an anonymous id already linked to a user is that user's (the link may have been
// stored first: sessions lag events), as applyLinks re-attributes those stored before it
const selectedColumns = SESSION_COLUMNS.map(([column]) => (column === 'canonical_id' ? 'COALESCE(i.user_id, t.canonical_id)' : `t.${column}`)).join(', ')
const UPSERT_SESSIONS = `INSERT INTO sessions (${names})
  SELECT DISTINCT ON (t.project, t.session_id) ${selectedColumns}
  FROM unnest(${SESSION_COLUMNS.map(([, type], i) => `$${i + 1}::${type}[]`).join(', ')}) AS t(${names})
  LEFT JOIN identities i ON i.project = t.project AND i.anonymous_id = t.canonical_id
  ORDER BY t.project, t.session_id, t.version DESC
  ON CONFLICT (project, session_id) DO UPDATE SET ${SESSION_COLUMNS.slice(2).map(([column]) => `${column} = EXCLUDED.${column}`).join(', ')}
  WHERE sessions.version < EXCLUDED.version`

export function sessionStore(query: Query) {
  return {
    /** Upserts sessions; a row is replaced only by a higher version. Returns rows written. */
    async upsertSessions(rows: readonly SessionRow[]): Promise<number> {
      if (rows.length === 0) return 0
      const columns: unknown[][] = SESSION_COLUMNS.map(() => new Array(rows.length))
      rows.forEach((r, i) => {
        const values = [r.project, r.sessionId, r.canonicalId, new Date(r.startedAt), new Date(r.lastEventAt), r.durationMs, r.events, r.pages,
          r.entryPage, r.exitPage, r.channel, r.device, r.firstMessageId, r.status, r.version, r.sessionsSeq]
        values.forEach((value, c) => (columns[c]![i] = value))
      })
      return (await query(UPSERT_SESSIONS, columns)).rowCount ?? 0
    },

    /**
     * Records links in order and re-attributes what was stored under each
     * anonymous id (events, sessions) to its user: the same link twice changes nothing.
     */
    async applyLinks(links: readonly IdentityLink[]): Promise<void> {
      for (const link of links) {
        await query(`INSERT INTO identities (project, anonymous_id, user_id, linked_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`,
          [link.project, link.anonymousId, link.userId, new Date(link.linkedAt)])
        await query(`UPDATE events SET canonical_id = $3 WHERE project = $1 AND canonical_id = $2`, [link.project, link.anonymousId, link.userId])
        await query(`UPDATE sessions SET canonical_id = $3 WHERE project = $1 AND canonical_id = $2`, [link.project, link.anonymousId, link.userId])
      }
    },

    /** Live sessions (not retracted) of a project, with their totals. */
    async sessionTotals(project: string): Promise<{ sessions: number; events: number; users: number }> {
      const result = await query<{ sessions: string; events: string | null; users: string }>(
        `SELECT count(*) AS sessions, sum(events) AS events, count(DISTINCT canonical_id) AS users
           FROM sessions WHERE project = $1 AND status <> '$session_retract'`, [project])
      const row = result.rows[0]!
      return { sessions: Number(row.sessions), events: Number(row.events ?? 0), users: Number(row.users) }
    },

    async listSessions(project: string, canonicalId?: string): Promise<SessionRow[]> {
      const result = await query<Record<string, unknown>>(
        `SELECT * FROM sessions WHERE project = $1 AND ($2::text IS NULL OR canonical_id = $2) ORDER BY started_at, session_id`, [project, canonicalId ?? null])
      return result.rows.map((row) => ({
        project: row.project as string, sessionId: row.session_id as string, canonicalId: row.canonical_id as string,
        startedAt: (row.started_at as Date).getTime(), lastEventAt: (row.last_event_at as Date).getTime(), durationMs: Number(row.duration_ms),
        events: row.events as number, pages: row.pages as number, entryPage: row.entry_page as string | null, exitPage: row.exit_page as string | null,
        channel: row.channel as string | null, device: row.device as string | null, firstMessageId: row.first_message_id as string,
        status: row.status as SessionRow['status'], version: row.version as number, sessionsSeq: Number(row.sessions_seq),
      }))
    },
  }
}
