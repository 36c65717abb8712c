export { connectNats } from './connect.ts'
export { PipelinedPublisher, PublishError } from './publisher.ts'
export type { PubAck, PublisherOptions } from './publisher.ts'
export { readStream } from './read.ts'
