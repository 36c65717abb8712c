export { openStore, DatabaseUnavailableError, isConnectionError } from './store.ts'
export type { EventRow, Store, StoreOptions } from './store.ts'
export { migrate, loadMigrations } from './migrate.ts'
export type { DatabaseTarget, Migration } from './migrate.ts'
