import swagger from '@fastify/swagger'
import fp from 'fastify-plugin'

/**
 * `GET /openapi.json`: an OpenAPI 3.1 document generated from every route's schema (3.1, as
 * the schemas use JSON Schema's null type). Registered before the routes: @fastify/swagger
 * collects them as they are added.
 */
export const openapiPlugin = fp(async (app) => {
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: { title: 'segstream', version: '0.1.0', description: 'Collector (Segment-compatible), exploration and funnel API. docs/explore.md and docs/funnels.md (API) describe the exploration and funnel routes.' },
      components: {
        securitySchemes: {
          apiKey: { type: 'http', scheme: 'bearer', description: 'the project\'s API key (sk_...)' },
          basic: { type: 'http', scheme: 'basic', description: 'the project\'s API key (exploration, import) or write key (collector) as the user name, no password' },
        },
      },
    },
  })
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger())
}, { name: 'openapi' })
