import t from 'tap'
import {
  assertProjectId,
  fnv1a32,
  InvalidTokenError,
  isProjectId,
  keyGroupOf,
  parseSubject,
  STAGES,
  stageFilter,
  subjectFor,
  subjectsIntersect,
  SUBJECT_ROOT,
  type Stage,
} from '../../topology/subjects.ts'

const TOKEN_ERROR = { code: 'SEG_INVALID_TOKEN', message: /^invalid / }

/** An independent FNV-1a 32 (BigInt, explicit UTF-8): the oracle for non-ASCII keys. */
function referenceFnv1a32(key: string): number {
  let hash = 0x811c9dc5n
  for (const byte of new TextEncoder().encode(key)) {
    hash ^= BigInt(byte)
    hash = (hash * 0x01000193n) & 0xffffffffn
  }
  return Number(hash)
}

t.test('assertProjectId / isProjectId', async (t) => {
  const rejected: Array<[string, unknown]> = [
    ['empty', ''],
    ['dot', 'a.b'],
    ['leading dot', '.a'],
    ['star', '*'],
    ['star inside', 'a*b'],
    ['greater-than', '>'],
    ['greater-than inside', 'a>'],
    ['space', 'a b'],
    ['leading space', ' alpha'],
    ['trailing space', 'alpha '],
    ['tab', 'a\tb'],
    ['newline', 'alpha\n'],
    ['uppercase', 'Alpha'],
    ['all uppercase', 'ALPHA'],
    ['64 characters', 'a'.repeat(64)],
    ['100 characters', 'a'.repeat(100)],
    ['leading dash', '-alpha'],
    ['leading underscore', '_alpha'],
    ['slash', 'a/b'],
    ['colon', 'a:b'],
    ['non-ASCII letter', 'café'],
    ['number', 42],
    ['undefined', undefined],
    ['null', null],
  ]
  for (const [label, value] of rejected) {
    t.throws(() => assertProjectId(value as string), { code: 'SEG_INVALID_TOKEN', message: /^invalid project id / }, `rejects ${label}`)
    t.equal(isProjectId(value), false, `isProjectId agrees for ${label}`)
  }
  const error = (() => {
    try {
      assertProjectId('a.b')
    } catch (e) {
      return e as InvalidTokenError
    }
    return undefined
  })()
  t.ok(error instanceof InvalidTokenError, 'throws an InvalidTokenError')
  t.equal(error?.code, 'SEG_INVALID_TOKEN')
  t.match(error?.message, /project id "a\.b"/, 'the message quotes the value')

  const accepted = ['alpha', 'a-b_c1', 'a', '0', '9lives', 'a'.repeat(63), 'x-', 'x_', 'abc-def-123']
  for (const value of accepted) {
    t.equal(assertProjectId(value), value, `accepts ${JSON.stringify(value)} and returns it`)
    t.equal(isProjectId(value), true, `isProjectId accepts ${JSON.stringify(value)}`)
  }
})

t.test('fnv1a32', async (t) => {
  // the published FNV-1a 32-bit test vectors
  const vectors: Array<[string, number]> = [
    ['', 0x811c9dc5],
    ['a', 0xe40c292c],
    ['b', 0xe70c2de5],
    ['c', 0xe60c2c52],
    ['d', 0xe10c2473],
    ['e', 0xe00c22e0],
    ['f', 0xe30c2799],
    ['fo', 0x6222e842],
    ['foo', 0xa9f37ed7],
    ['foob', 0x3f5076ef],
    ['fooba', 0x39aaa18a],
    ['foobar', 0xbf9cf968],
  ]
  for (const [key, expected] of vectors) {
    t.equal(fnv1a32(key), expected, `fnv1a32(${JSON.stringify(key)}) = 0x${expected.toString(16)}`)
  }
  // non-ASCII keys hash their UTF-8 bytes, not UTF-16 code units
  for (const key of ['é', 'ünïcödé', '日本語', '🙂', 'user-🙂-42', 'ascii first, then é', 'x'.repeat(1000)]) {
    const hash = fnv1a32(key)
    t.equal(hash, referenceFnv1a32(key), `UTF-8 hash of ${JSON.stringify(key.slice(0, 20))}`)
    t.ok(Number.isInteger(hash) && hash >= 0 && hash <= 0xffffffff, 'an unsigned 32-bit integer')
  }
  t.not(fnv1a32('é'), fnv1a32('\u00e9'.normalize('NFD')), 'different byte sequences hash differently')
})

t.test('keyGroupOf', async (t) => {
  const keys = Array.from({ length: 2000 }, (_, i) => `user-${i}`)
  for (const groups of [1, 2, 3, 7, 64, 4096]) {
    for (const key of keys) {
      const kg = keyGroupOf(key, groups)
      if (!(Number.isInteger(kg) && kg >= 0 && kg < groups)) {
        t.fail(`keyGroupOf(${key}, ${groups}) = ${kg} is out of range`)
      }
      if (kg !== fnv1a32(key) % groups) t.fail(`keyGroupOf(${key}, ${groups}) is not fnv1a32 mod ${groups}`)
      if (keyGroupOf(key, groups) !== kg) t.fail(`keyGroupOf(${key}, ${groups}) is not stable`)
    }
    t.pass(`${keys.length} keys land in [0, ${groups}), stably, at fnv1a32 % ${groups}`)
  }
  t.equal(keyGroupOf('anything', 1), 0, 'one key group: always 0')
  t.equal(keyGroupOf('foobar', 64), 0xbf9cf968 % 64, 'a known vector')
  t.equal(keyGroupOf('foobar', 64), 40, 'pinned: foobar is in key group 40 of 64')
  const used = new Set(keys.map((key) => keyGroupOf(key, 64)))
  t.equal(used.size, 64, '2000 keys spread over all 64 key groups')
})

t.test('subjectFor / stageFilter / parseSubject', async (t) => {
  t.equal(SUBJECT_ROOT, 'seg')
  t.same([...STAGES], ['raw', 'import', 'enriched', 'sessions', 'profiles', 'funnels', 'aggregates', 'counts', 'funnel_counts', 'backfill', 'late', 'dlq'])
  const cases: Array<[string, Stage, number, string]> = [
    ['alpha', 'raw', 0, 'seg.alpha.raw.0'],
    ['alpha', 'import', 7, 'seg.alpha.import.7'],
    ['a-b_c1', 'enriched', 63, 'seg.a-b_c1.enriched.63'],
    ['0', 'dlq', 4095, 'seg.0.dlq.4095'],
  ]
  for (const [project, stage, keyGroup, subject] of cases) {
    t.equal(subjectFor(project, stage, keyGroup), subject, `subjectFor(${project}, ${stage}, ${keyGroup})`)
    t.strictSame(parseSubject(subject), { project, stage, keyGroup }, `parseSubject(${subject})`)
  }
  for (const stage of STAGES) {
    t.equal(stageFilter(stage), `seg.*.${stage}.*`, `stageFilter(${stage})`)
    for (const keyGroup of [0, 1, 10, 63, 1000]) {
      const parsed = parseSubject(subjectFor('proj-1', stage, keyGroup))
      if (parsed.project !== 'proj-1' || parsed.stage !== stage || parsed.keyGroup !== keyGroup) t.fail(`round trip of ${stage}/${keyGroup}`)
    }
    t.ok(subjectsIntersect(stageFilter(stage), subjectFor('alpha', stage, 3)), `the ${stage} filter matches a ${stage} subject`)
  }
  t.pass('every stage and key group round-trips')

  const badProjects = ['a.b', 'a.*', '*', '>', 'a b', 'Alpha', '', 'a'.repeat(64), 'x.>']
  for (const project of badProjects) {
    t.throws(() => subjectFor(project, 'raw', 0), TOKEN_ERROR, `subjectFor rejects project ${JSON.stringify(project)}`)
  }
  for (const keyGroup of [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, -0.5]) {
    t.throws(() => subjectFor('alpha', 'raw', keyGroup as unknown as number), TOKEN_ERROR, `subjectFor rejects key group ${keyGroup}`)
  }

  const badSubjects = [
    '',
    'seg',
    'seg.alpha.raw',
    'seg.alpha.raw.1.2',
    'seg.alpha.raw.1.>',
    'foo.alpha.raw.1',
    'SEG.alpha.raw.1',
    'seg.Alpha.raw.1',
    'seg.*.raw.1',
    'seg.>.raw.1',
    'seg.alpha..1',
    'seg.alpha.raw.x',
    'seg.alpha.raw.1.5',
    'seg.alpha.raw.*',
    'seg.alpha.raw.>',
  ]
  for (const subject of badSubjects) {
    t.throws(() => parseSubject(subject), TOKEN_ERROR, `parseSubject rejects ${JSON.stringify(subject)}`)
  }
})


t.test('parseSubject rejects malformed key-group and stage tokens', async (t) => {
  const malformed = [
    'seg.alpha.raw.',
    'seg.alpha.raw.-1',
    'seg.alpha.raw. 1',
    'seg.alpha.raw.0x10',
    'seg.alpha.raw.1e1',
    'seg.alpha.raw.01',
    'seg.alpha.*.1',
    'seg.alpha.>.1',
  ]
  for (const subject of malformed) {
    t.throws(() => parseSubject(subject), TOKEN_ERROR, `parseSubject rejects ${JSON.stringify(subject)}`)
  }
})

t.test('subjectFor rejects injected tokens in a string key group or a stage', async (t) => {
  for (const keyGroup of ['1.2', '', 'a b', '3.>']) {
    t.throws(() => subjectFor('alpha', 'raw', keyGroup as unknown as number), TOKEN_ERROR, `subjectFor rejects key group ${JSON.stringify(keyGroup)}`)
  }
  for (const stage of ['raw.x', 'bogus', '>', '']) {
    t.throws(() => subjectFor('alpha', stage as Stage, 0), TOKEN_ERROR, `subjectFor rejects stage ${JSON.stringify(stage)}`)
  }
})

t.test('subjectsIntersect truth table', async (t) => {
  const table: Array<[string, string, boolean]> = [
    ['a.b.c', 'a.b.c', true],
    ['a.b.c', 'a.b.d', false],
    ['a.b', 'a.b.c', false],
    ['a', 'b', false],
    ['a.*.c', 'a.b.c', true],
    ['a.*.c', 'a.b.d', false],
    ['a.*', 'a.b.c', false],
    ['*', 'a', true],
    ['*', 'a.b', false],
    ['*.*', 'a.b', true],
    ['*.*', 'a.>', true],
    ['a.*.c', '*.b.*', true],
    ['a.*.c', '*.b.d', false],
    ['a.>', 'a.b.c', true],
    ['a.>', 'a.b', true],
    ['a.>', 'a', false],
    ['a.>', 'b.c', false],
    ['a.>', 'b.>', false],
    ['a.>', 'a.*', true],
    ['a.b.>', 'a.*', false],
    ['a.b.>', 'a.*.c.d', true],
    ['>', 'a', true],
    ['>', 'a.b.c.d', true],
    ['>', '>', true],
    ['*', '>', true],
    ['seg.*.raw.*', 'seg.alpha.raw.3', true],
    ['seg.*.raw.*', 'seg.alpha.enriched.3', false],
    ['seg.*.raw.*', 'seg.*.enriched.*', false],
    ['seg.*.raw.*', 'seg.*.raw.*', true],
    ['seg.*.raw.*', 'seg.alpha.>', true],
    ['seg.*.raw.*', 'seg.>', true],
    ['seg.*.raw.*', 'seg.alpha.raw', false],
    ['seg.*.raw.*', 'seg.alpha.raw.3.4', false],
  ]
  for (const [a, b, expected] of table) {
    t.equal(subjectsIntersect(a, b), expected, `${a} ∩ ${b} = ${expected}`)
    t.equal(subjectsIntersect(b, a), expected, `${b} ∩ ${a} = ${expected} (symmetric)`)
  }
})
