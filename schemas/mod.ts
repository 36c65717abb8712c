export * from './envelope.ts'
export * from './segment.ts'
export { decode, decodeEnvelope, encode, SchemaError, validator } from './codec.ts'
