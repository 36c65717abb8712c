import type { PipelinedPublisher } from '../../broker/publisher.ts'
import { encode } from '../../schemas/codec.ts'
import { ENVELOPE_VERSION, type Control, type ControlEnvelope } from '../../schemas/envelope.ts'
import { subjectFor, type Stage } from '../../topology/subjects.ts'

/**
 * Publishes a definition change for a step into every key group of each stage
 * the step reads. Ids are deterministic (`control:<project>:<step>:<name>:<version>:<kg>`),
 * so publishing the same version twice stores it once.
 */
export async function publishControl(publisher: PipelinedPublisher, options: { project: string; stages: Stage[]; keyGroups: number; control: Control; time: number }): Promise<number> {
  const { project, control } = options
  const pending: Promise<unknown>[] = []
  for (const stage of options.stages) {
    for (let keyGroup = 0; keyGroup < options.keyGroups; keyGroup++) {
      const envelope: ControlEnvelope = {
        v: ENVELOPE_VERSION, type: 'control', project, id: `${control.stepId}:${control.name}:${control.version}`,
        time: options.time, key: control.name, keyGroup, source: 'live', data: control,
      }
      pending.push(publisher.publish(subjectFor(project, stage, keyGroup), encode(envelope), `control:${project}:${control.stepId}:${control.name}:${control.version}:${stage}:${keyGroup}`))
    }
  }
  await Promise.all(pending)
  return pending.length
}
