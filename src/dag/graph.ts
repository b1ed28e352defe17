/** Dependency graph helpers over job inputs: cycle detection and a stable topological order. */
import { TraceError } from '../core/errors.js';
import { isDatasetRef, type DagSpec } from './types.js';
import type { Path } from './problems.js';

export interface GraphNode {
  name: string;
  /** Upstream jobs this job reads from, with the YAML path of each reference. */
  upstream: Array<{ job: string; at: Path }>;
}

export interface Cycle {
  /** Job names along the cycle, first name repeated at the end; each job reads from the next. */
  jobs: string[];
  /** Path of the input reference that closes the cycle. */
  at: Path;
}

/**
 * Finds cycles with an iterative depth-first search (one report per back edge, so every cycle
 * is reported at least once). Edges to unknown jobs are ignored; the caller reports those.
 */
export function findCycles(nodes: readonly GraphNode[]): Cycle[] {
  const byName = new Map<string, GraphNode>();
  for (const n of nodes) if (!byName.has(n.name)) byName.set(n.name, n);
  const state = new Map<string, 'open' | 'done'>();
  const cycles: Cycle[] = [];
  for (const root of byName.values()) {
    if (state.has(root.name)) continue;
    const stack: Array<{ node: GraphNode; next: number }> = [{ node: root, next: 0 }];
    state.set(root.name, 'open');
    while (stack.length > 0) {
      const top = stack[stack.length - 1]!;
      const edge = top.node.upstream[top.next++];
      if (!edge) {
        state.set(top.node.name, 'done');
        stack.pop();
        continue;
      }
      const target = byName.get(edge.job);
      if (!target) continue;
      const s = state.get(target.name);
      if (s === 'open') {
        const from = stack.findIndex((f) => f.node.name === target.name);
        const jobs = stack.slice(from).map((f) => f.node.name);
        jobs.push(target.name);
        cycles.push({ jobs, at: edge.at });
      } else if (s === undefined) {
        state.set(target.name, 'open');
        stack.push({ node: target, next: 0 });
      }
    }
  }
  return cycles;
}

/**
 * Job names with every job after all jobs it reads from; ties keep declaration order.
 * Throws 422 DAG_INVALID if the spec has a cycle (validateDag never returns such a spec).
 */
export function topoOrder(spec: DagSpec): string[] {
  const index = new Map(spec.jobs.map((j, i) => [j.name, i]));
  const pending = new Map<string, Set<string>>();
  const downstream = new Map<string, string[]>();
  for (const job of spec.jobs) {
    const ups = new Set<string>();
    for (const input of job.inputs) {
      if (!isDatasetRef(input.from) && index.has(input.from.job)) ups.add(input.from.job);
    }
    pending.set(job.name, ups);
    for (const u of ups) {
      const list = downstream.get(u) ?? [];
      list.push(job.name);
      downstream.set(u, list);
    }
  }
  // Ready jobs by declaration index, smallest first (a binary heap: re-sorting a list of ready
  // jobs on every step made a DAG of 2,000 independent jobs take half a second).
  const ready = new MinHeap();
  spec.jobs.forEach((j, i) => { if (pending.get(j.name)!.size === 0) ready.push(i); });
  const order: string[] = [];
  while (ready.size > 0) {
    const name = spec.jobs[ready.pop()]!.name;
    order.push(name);
    for (const d of downstream.get(name) ?? []) {
      const ups = pending.get(d)!;
      ups.delete(name);
      if (ups.size === 0) ready.push(index.get(d)!);
    }
  }
  if (order.length !== spec.jobs.length) {
    throw new TraceError(422, 'DAG_INVALID', 'job inputs form a cycle', {
      problems: [{ path: 'jobs', message: 'job inputs form a cycle' }],
    });
  }
  return order;
}

/** A binary min-heap of numbers. */
class MinHeap {
  private readonly a: number[] = [];

  get size(): number {
    return this.a.length;
  }

  push(x: number): void {
    const a = this.a;
    a.push(x);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (a[p]! <= x) break;
      a[i] = a[p]!;
      i = p;
    }
    a[i] = x;
  }

  pop(): number {
    const a = this.a;
    const top = a[0]!;
    const last = a.pop()!;
    if (a.length > 0) {
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= a.length) break;
        const r = l + 1;
        const c = r < a.length && a[r]! < a[l]! ? r : l;
        if (a[c]! >= last) break;
        a[i] = a[c]!;
        i = c;
      }
      a[i] = last;
    }
    return top;
  }
}
