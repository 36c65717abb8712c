import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import type pg from 'pg'
import type { Logger } from '../config/logger.ts'

export type DatabaseTarget = 'timescaledb' | 'postgres'

const MIGRATIONS_DIR = join(import.meta.dirname, 'migrations')
const FILE = /^(\d{4})_([a-z0-9_]+)(?:\.(timescaledb|postgres))?\.sql$/

export interface Migration {
  version: number
  name: string
  common?: string
  perTarget: Partial<Record<DatabaseTarget, string>>
}

/** Numbered SQL files; `NNNN_name.sql` for both targets, `NNNN_name.<target>.sql` for one. */
export async function loadMigrations(dir = MIGRATIONS_DIR): Promise<Migration[]> {
  const byVersion = new Map<number, Migration>()
  for (const file of (await readdir(dir)).sort()) {
    const match = FILE.exec(file)
    if (!match) continue
    const version = Number(match[1])
    const migration = byVersion.get(version) ?? { version, name: match[2]!, perTarget: {} }
    const sql = await readFile(join(dir, file), 'utf8')
    if (match[3]) migration.perTarget[match[3] as DatabaseTarget] = sql
    else migration.common = sql
    byVersion.set(version, migration)
  }
  return [...byVersion.values()].sort((a, b) => a.version - b.version)
}

/**
 * Chooses the target: the one recorded by an earlier migration wins (tables were
 * built for it); else TimescaleDB when the extension can be created; else plain
 * PostgreSQL.
 */
async function detectTarget(client: pg.PoolClient, wanted: 'auto' | DatabaseTarget, logger: Logger): Promise<DatabaseTarget> {
  await client.query(`CREATE TABLE IF NOT EXISTS segstream_migrations (
    version integer PRIMARY KEY, name text NOT NULL, target text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`)
  const recorded = await client.query<{ target: DatabaseTarget }>('SELECT target FROM segstream_migrations ORDER BY version LIMIT 1')
  if (recorded.rows[0]) {
    const target = recorded.rows[0].target
    if (wanted !== 'auto' && wanted !== target) throw new Error(`SEGSTREAM_DB_TARGET=${wanted} but this database was migrated for ${target}`)
    if (target === 'timescaledb') await client.query('CREATE EXTENSION IF NOT EXISTS timescaledb')
    return target
  }
  if (wanted === 'postgres') return 'postgres'
  const available = await client.query(`SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'`)
  if (available.rowCount === 0) {
    if (wanted === 'timescaledb') throw new Error('SEGSTREAM_DB_TARGET=timescaledb but the timescaledb extension is not available on this server')
    return 'postgres'
  }
  try {
    await client.query('SAVEPOINT detect')
    await client.query('CREATE EXTENSION IF NOT EXISTS timescaledb')
    await client.query('RELEASE SAVEPOINT detect')
    return 'timescaledb'
  } catch (error) {
    await client.query('ROLLBACK TO SAVEPOINT detect')
    if (wanted === 'timescaledb') throw error
    logger.warn({ err: error }, 'timescaledb is installed but cannot be loaded; using plain PostgreSQL')
    return 'postgres'
  }
}

/** Applies pending migrations in order, in one transaction under an advisory lock: safe to run concurrently and repeatedly. */
export async function migrate(pool: pg.Pool, wanted: 'auto' | DatabaseTarget, logger: Logger): Promise<{ target: DatabaseTarget; applied: number[] }> {
  const migrations = await loadMigrations()
  const client = await pool.connect()
  try {
    await client.query('BEGIN')
    // one migrator at a time across processes
    await client.query('SELECT pg_advisory_xact_lock(7423001)')
    const target = await detectTarget(client, wanted, logger)
    const done = new Set((await client.query<{ version: number }>('SELECT version FROM segstream_migrations')).rows.map((r) => r.version))
    const applied: number[] = []
    for (const migration of migrations) {
      if (done.has(migration.version)) continue
      if (migration.common) await client.query(migration.common)
      const specific = migration.perTarget[target]
      if (specific) await client.query(specific)
      await client.query('INSERT INTO segstream_migrations (version, name, target) VALUES ($1, $2, $3)', [migration.version, migration.name, target])
      applied.push(migration.version)
      logger.info({ version: migration.version, name: migration.name, target }, 'migration applied')
    }
    await client.query('COMMIT')
    return { target, applied }
  } catch (error) {
    await client.query('ROLLBACK').catch(() => {})
    throw error
  } finally {
    client.release()
  }
}
