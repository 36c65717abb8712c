import { ENVELOPE_VERSION, type DeadLetterEnvelope } from '../../schemas/envelope.ts'
import { parseSubject } from '../../topology/subjects.ts'
import type { Emission } from './operator.ts'

/** A message a step could not handle, as a dead letter on the project's DLQ subject. */
export function deadLetterOf(stepId: string, subject: string, seq: number, payload: Uint8Array, reason: string, now: number): Emission | undefined {
  let project: string
  let keyGroup: number
  try {
    ;({ project, keyGroup } = parseSubject(subject))
  } catch {
    return undefined
  }
  const envelope: DeadLetterEnvelope = {
    v: ENVELOPE_VERSION, type: 'dead_letter', project, id: `${stepId}:${subject}:${seq}`, time: now,
    key: subject, keyGroup, source: 'live', data: { stepId, reason, payload, subject, seq },
  }
  return { stage: 'dlq', project, keyGroup, envelope }
}
