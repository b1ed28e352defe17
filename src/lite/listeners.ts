import { DEFAULT_PORTS } from '../core/config.js';
import { LISTEN_ENV, parseListen, type ListenAddress, type ListenService } from '../core/ops.js';

export type LitePorts = Partial<Record<ListenService, number>>;

/**
 * Where each listener of `trace lite up` binds. A port given in `ports` (from `--port-base`)
 * wins, on `host`; else the service's `TRACE_<SERVICE>_LISTEN`; else the standard port (8080 to
 * 8083) on `host`. The worker, sink and delivery ops listeners have no standard port: they are
 * off unless a port or their variable is given.
 */
export function liteListeners(penv: NodeJS.ProcessEnv, ports: LitePorts | undefined, host: string): Record<ListenService, ListenAddress | undefined> {
  const defaults: Record<ListenService, number | undefined> = {
    dispatcher: DEFAULT_PORTS.dispatcher, gateway: DEFAULT_PORTS.gateway, query: DEFAULT_PORTS.query, rpcGateway: DEFAULT_PORTS.rpcGateway,
    worker: undefined, sink: undefined, delivery: undefined,
  };
  const out = {} as Record<ListenService, ListenAddress | undefined>;
  for (const svc of Object.keys(LISTEN_ENV) as ListenService[]) {
    const given = ports?.[svc];
    const raw = penv[LISTEN_ENV[svc]]?.trim();
    const port = given ?? defaults[svc];
    out[svc] = given !== undefined ? { host, port: given }
      : raw ? parseListen(raw, LISTEN_ENV[svc], host)
        : port !== undefined ? { host, port } : undefined;
  }
  return out;
}

/** `--port-base N`: gateway N, dispatcher N+1, query N+2, RPC gateway N+3, worker, sink and delivery ops N+4..N+6; 0 = free ports. */
export function portsFromBase(base: number): Required<LitePorts> {
  const at = (i: number) => (base === 0 ? 0 : base + i);
  return { gateway: at(0), dispatcher: at(1), query: at(2), rpcGateway: at(3), worker: at(4), sink: at(5), delivery: at(6) };
}
