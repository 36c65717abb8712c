/**
 * segstream browser tracker: Segment-format messages, batched to the collector's
 * `POST /v1/batch`. One dependency-free file; `scripts/build-browser.ts` bundles
 * it as `t.js` (script tag, exposes `window.segstream`) and `t.mjs` (`createTracker`).
 *
 * Rules every line here follows: nothing may throw into the host page (public
 * methods, timers and listeners run inside `guard`), and the gzipped script must
 * stay under 3 KB (checked by the build), so the code is terse on purpose.
 */

/** Replaced by the build with the package version. */
declare const __VERSION__: string

export type Properties = Record<string, unknown>

export interface TrackerOptions {
  /** The project's write key (required). */
  writeKey: string
  /** Collector origin, e.g. `https://collect.example.com`. Default: the page's own origin. */
  host?: string
  /** Send a page view now and on every history change (pushState, replaceState, popstate). Default true. */
  autoPage?: boolean
  /** Send nothing while the browser's Do Not Track setting is on. Default false. */
  respectDnt?: boolean
  /** Milliseconds a message may wait before its batch is sent. Default 2000. */
  flushInterval?: number
  /** Queued messages that trigger a send at once; also the most messages per request. Default 20. */
  flushAt?: number
  /** Most messages kept while the collector cannot be reached; the oldest are dropped first. Default 500. */
  maxQueue?: number
}

export interface Tracker {
  /** Records an action: `track('Signed Up', { plan: 'pro' })`. */
  track(event: string, properties?: Properties): void
  /** Names the user; later messages carry this userId until `reset()`. */
  identify(userId?: string | null, traits?: Properties): void
  /** Records a page view of the current URL (sent automatically unless autoPage is false). */
  page(name?: string, properties?: Properties): void
  /** Links the current identity (userId, else anonymousId) to `userId`, which becomes the current one. */
  alias(userId: string): void
  /** Forgets userId, anonymousId and session (e.g. on logout); the next message starts a new anonymous user. */
  reset(): void
  /** Stops all sending in this browser (persisted) and drops queued messages. */
  optOut(): void
  /** Undoes `optOut()`. */
  optIn(): void
  /** Sends queued messages now instead of waiting for the timer. */
  flush(): void
  /** The ids messages are sent with right now. */
  user(): { anonymousId: string; userId: string | null }
}

declare global {
  interface Window {
    segstream?: Tracker
  }
}

type Message = Properties & { messageId: string }

/** Thirty minutes without a message end a session. */
const SESSION_MS = 18e5
const PREFIX = 'segstream_'

/** Runs `f`, swallowing anything it throws: the host page must never see our errors. */
const guard =
  <A extends unknown[], R>(f: (...args: A) => R) =>
  (...args: A): R | undefined => {
    try {
      return f(...args)
    } catch {}
  }

// random v4 uuid; crypto.randomUUID exists only on https pages, getRandomValues everywhere
const uuid = () =>
  '10000000-1000-4000-8000-100000000000'.replace(/[018]/g, (c) =>
    (+c ^ (crypto.getRandomValues(new Uint8Array(1))[0] & (15 >> (+c / 4)))).toString(16),
  )

/** localStorage, falling back to a first-party cookie where storage is blocked. */
const get = (key: string): string | null => {
  try {
    const value = localStorage.getItem(PREFIX + key)
    if (value != null) return value
  } catch {}
  const match = document.cookie.match('(?:^|; )' + PREFIX + key + '=([^;]*)')
  return match && decodeURIComponent(match[1])
}

/** `null` removes the key from both places. */
const set = (key: string, value: string | null) => {
  try {
    if (value != null) return localStorage.setItem(PREFIX + key, value)
    localStorage.removeItem(PREFIX + key)
  } catch {}
  document.cookie = PREFIX + key + '=' + encodeURIComponent(value || '') + ';path=/;SameSite=Lax;max-age=' + (value == null ? 0 : 31536e3)
}

const iso = (time?: number) => new Date(time ?? Date.now()).toISOString()

/** The URL without its fragment: in-page anchors are not page views. */
const here = () => location.href.split('#')[0]

export function createTracker(options: TrackerOptions): Tracker {
  const { writeKey, respectDnt, flushInterval = 2e3, flushAt = 20, maxQueue = 500 } = options
  const url = (options.host || location.origin).replace(/\/+$/, '') + '/v1/batch'
  // the queue lives in localStorage only (too big for a cookie), else in memory
  const queueKey = PREFIX + 'queue_' + writeKey
  let memory: Message[] = []
  // messages this page sends: its own plus those an earlier page left; another open tab sends its own
  let mine: Record<string, 1> = {}
  let inFlight: string[] = []
  let sending = 0
  let attempt = 0
  let timer: ReturnType<typeof setTimeout> | 0 = 0
  let last = here()
  let referrer = document.referrer

  const read = (): Message[] => {
    try {
      const stored = localStorage.getItem(queueKey)
      if (stored) return JSON.parse(stored)
    } catch {}
    return memory
  }
  const write = (queue: Message[]) => {
    memory = queue
    try {
      localStorage.setItem(queueKey, JSON.stringify(queue))
    } catch {
      // full or blocked: make `read` fall back to the in-memory copy
      try {
        localStorage.removeItem(queueKey)
      } catch {}
    }
  }
  const drop = (batch: Message[]) => {
    const ids = batch.map((message) => message.messageId)
    for (const id of ids) delete mine[id]
    write(read().filter((message) => !ids.includes(message.messageId)))
  }
  const pending = () => read().filter((message) => mine[message.messageId] && !inFlight.includes(message.messageId))
  const body = (batch: Message[]) => JSON.stringify({ batch, sentAt: iso(), writeKey })
  const off = () => get('optout') == '1' || (!!respectDnt && (navigator.doNotTrack == '1' || (window as { doNotTrack?: string }).doNotTrack == '1'))
  const anonymousId = () => {
    let id = get('anonymous_id')
    if (!id) set('anonymous_id', (id = uuid()))
    return id
  }

  const schedule = (ms: number) => {
    if (!timer) timer = setTimeout(guard(() => ((timer = 0), flush())), ms)
  }

  const flush = () => {
    if (sending) return
    clearTimeout(timer)
    timer = 0
    const batch = pending().slice(0, flushAt)
    if (!batch.length || off()) return
    const payload = body(batch)
    sending = 1
    inFlight = batch.map((message) => message.messageId)
    // text/plain (fetch's default for a string) needs no CORS preflight; keepalive lets the
    // request outlive the page, within the browser's 64 KB budget (2e4 characters are at most 6e4 UTF-8 bytes)
    fetch(url, { method: 'POST', body: payload, keepalive: payload.length < 2e4, credentials: 'omit' })
      // a 400 means every message was invalid: sending them again cannot help
      .then((response) => response.ok || response.status == 400, () => false)
      .then(
        guard((delivered: boolean) => {
          sending = 0
          inFlight = []
          if (delivered) {
            attempt = 0
            drop(batch)
            flush()
          } else {
            // exponential backoff with jitter, 0.5-1 s doubling up to 32-64 s
            clearTimeout(timer)
            timer = 0
            schedule((1 + Math.random()) * 500 * 2 ** Math.min(attempt++, 6))
          }
        }),
      )
  }

  const message = (type: string, fields: Properties) => {
    if (off()) return
    const now = Date.now()
    const [sessionId, lastSeen] = (get('session') || '').split('.')
    const session = sessionId && now - +lastSeen < SESSION_MS ? sessionId : String(now)
    set('session', session + '.' + now)
    const campaign: Record<string, string> = {}
    new URLSearchParams(location.search).forEach((value, key) => {
      if (key.startsWith('utm_')) campaign[key == 'utm_campaign' ? 'name' : key.slice(4)] = value
    })
    const full = {
      type,
      messageId: uuid(),
      anonymousId: anonymousId(),
      userId: get('user_id') || undefined,
      timestamp: iso(now),
      context: {
        page: pageContext(),
        campaign: Object.keys(campaign).length ? campaign : undefined,
        locale: navigator.language,
        timezone: Intl.DateTimeFormat().resolvedOptions().timeZone,
        screen: { width: screen.width, height: screen.height },
        userAgent: navigator.userAgent,
        library: { name: 'segstream-tracker', version: __VERSION__ },
        sessionId: +session,
      },
      ...fields,
    }
    // a copy through JSON: drops undefined, and properties that cannot be serialized throw here, not in every later send
    const queue = read()
    queue.push(JSON.parse(JSON.stringify(full)))
    write(queue.slice(-maxQueue))
    mine[full.messageId] = 1
    // while backing off, the retry timer sends it
    if (!attempt) pending().length < flushAt ? schedule(flushInterval) : flush()
  }

  const pageContext = () => ({ url: location.href, path: location.pathname, referrer, title: document.title, search: location.search })

  /** The page is going away (or may be killed while hidden): hand what is queued to the browser. */
  const leave = () => {
    // offline or in backoff the beacon would be lost: the queue stays stored for the next page
    if (attempt || !navigator.onLine || off()) return
    const queue = pending()
    while (queue.length) {
      const batch = queue.splice(0, flushAt)
      // text/plain again; the collector parses it as JSON. Once the browser took the beacon,
      // it is out of our hands: resending it on the next page could duplicate it
      if (!navigator.sendBeacon?.(url, body(batch))) return flush()
      drop(batch)
    }
  }

  const tracker: Tracker = {
    track: (event, properties) => message('track', { event, properties }),
    identify(userId, traits) {
      if (userId) set('user_id', String(userId))
      message('identify', { traits })
    },
    page(name, properties) {
      const now = here()
      if (now != last) (referrer = last), (last = now)
      message('page', { name, properties: { ...pageContext(), ...properties } })
    },
    alias(userId) {
      const previousId = get('user_id') || anonymousId()
      set('user_id', String(userId))
      message('alias', { previousId })
    },
    reset() {
      for (const key of ['user_id', 'anonymous_id', 'session']) set(key, null)
    },
    optOut() {
      set('optout', '1')
      write([])
      mine = {}
    },
    optIn: () => set('optout', null),
    flush,
    user: () => ({ anonymousId: anonymousId(), userId: get('user_id') }),
  }
  for (const key of Object.keys(tracker) as (keyof Tracker)[]) tracker[key] = guard(tracker[key] as () => void) as never

  try {
    for (const queued of read()) mine[queued.messageId] = 1
    if (options.autoPage ?? true) {
      const navigated = () => setTimeout(guard(() => here() != last && tracker.page()))
      for (const method of ['pushState', 'replaceState'] as const) {
        const original = history[method]
        history[method] = function (this: History, ...args: Parameters<History['pushState']>) {
          original.apply(this, args)
          navigated()
        }
      }
      addEventListener('popstate', navigated)
      tracker.page()
    }
    addEventListener('pagehide', guard(leave))
    document.addEventListener('visibilitychange', guard(() => document.visibilityState == 'hidden' && leave()))
    addEventListener('online', guard(() => ((attempt = 0), flush())))
    // messages an earlier page left behind
    schedule(flushInterval)
  } catch {}
  return tracker
}

// the script-tag form: <script src=".../t.js" data-write-key="..."> (an ES module has no currentScript)
try {
  const script = document.currentScript as HTMLScriptElement | null
  const data = script?.dataset
  if (data?.writeKey) {
    window.segstream = createTracker({
      writeKey: data.writeKey,
      host: data.host || new URL(script!.src).origin,
      autoPage: data.autoPage != 'false',
      respectDnt: data.respectDnt == 'true',
    })
  }
} catch {}
