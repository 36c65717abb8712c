export { createProject, getProject, listProjects, openProjects, rotateKey, ProjectCache, ProjectError, PROJECTS_BUCKET, sha256 } from './registry.ts'
export type { NewProject } from './registry.ts'
export { DEFAULT_SETTINGS, isValidTimezone, Project, ProjectSettings } from './model.ts'
