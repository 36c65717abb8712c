import { BACKFILL_STAGE } from '../../operators/funnel/backfill.ts'
import { segstreamTopology } from '../../topology/definition.ts'
import type { Topology } from '../../topology/model.ts'
import { STAGES, type Stage } from '../../topology/subjects.ts'

/** The step funnel definitions are published to, as control messages on the stages it reads. */
export const FUNNEL_STEP_ID = 'funnel'

/**
 * The stages a funnel's control message goes to: those the funnel step reads events from
 * (enriched and sessions), from the topology. A control message must take effect at a position
 * in each of them, and the backfill worker replays each up to it. The backfill stage is left
 * out: it carries the worker's seeds, published after the control message.
 */
export function funnelStages(topology: Topology = segstreamTopology()): Stage[] {
  const step = topology.steps.find((candidate) => candidate.stepId === FUNNEL_STEP_ID)
  if (!step) throw new Error(`the topology has no step "${FUNNEL_STEP_ID}": funnel definitions have nowhere to go`)
  return step.inputs.map((input) => {
    // inputs are stage filters, seg.*.<stage>.*
    const stage = input.split('.')[2] as Stage
    if (!STAGES.includes(stage)) throw new Error(`step "${FUNNEL_STEP_ID}" reads ${input}, which is not a stage filter`)
    return stage
  }).filter((stage) => stage !== BACKFILL_STAGE)
}
