import Type, { type Static } from 'typebox'

/** Where an event entered the system; event time advances separately per source. */
export const Source = Type.Union([Type.Literal('live'), Type.Literal('import')])
export type Source = Static<typeof Source>
