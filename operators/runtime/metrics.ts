/** A small Prometheus text-format registry: counters and gauges with labels. */
type Labels = Record<string, string | number>

interface Series {
  help: string
  type: 'counter' | 'gauge'
  values: Map<string, { labels: Labels; value: number }>
}

const labelKey = (labels: Labels) => Object.keys(labels).sort().map((k) => `${k}=${labels[k]}`).join(',')
const escape = (value: string | number) => String(value).replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')

export class Metrics {
  #series = new Map<string, Series>()
  /** Called before rendering, to refresh gauges that are cheaper to read than to track. */
  #collectors: (() => void | Promise<void>)[] = []

  #get(name: string, type: Series['type'], help: string): Series {
    let series = this.#series.get(name)
    if (!series) this.#series.set(name, (series = { help, type, values: new Map() }))
    return series
  }

  inc(name: string, help: string, labels: Labels, by = 1): void {
    const series = this.#get(name, 'counter', help)
    const key = labelKey(labels)
    const current = series.values.get(key)
    if (current) current.value += by
    else series.values.set(key, { labels, value: by })
  }

  /** A counter whose running total is kept elsewhere. */
  setCounter(name: string, help: string, labels: Labels, value: number): void {
    this.#get(name, 'counter', help).values.set(labelKey(labels), { labels, value })
  }

  set(name: string, help: string, labels: Labels, value: number): void {
    this.#get(name, 'gauge', help).values.set(labelKey(labels), { labels, value })
  }

  /** Drops every gauge value carrying these labels (a key group that moved away). */
  forget(labels: Labels): void {
    for (const series of this.#series.values()) {
      for (const [key, entry] of series.values) {
        if (Object.entries(labels).every(([k, v]) => entry.labels[k] === v)) series.values.delete(key)
      }
    }
  }

  collect(collector: () => void | Promise<void>): void {
    this.#collectors.push(collector)
  }

  async render(): Promise<string> {
    for (const collector of this.#collectors) await collector()
    const lines: string[] = []
    for (const [name, series] of [...this.#series].sort(([a], [b]) => a.localeCompare(b))) {
      lines.push(`# HELP ${name} ${series.help}`, `# TYPE ${name} ${series.type}`)
      for (const { labels, value } of series.values.values()) {
        const text = Object.entries(labels).map(([k, v]) => `${k}="${escape(v)}"`).join(',')
        lines.push(`${name}${text ? `{${text}}` : ''} ${Number.isFinite(value) ? value : 0}`)
      }
    }
    return `${lines.join('\n')}\n`
  }
}
