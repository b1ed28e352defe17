/**
 * A TCP proxy the test owns, in front of the shared Postgres: failure drills cut a database by
 * cutting the proxy, never by stopping the server other tests use.
 *
 * - `cut()`: every open connection is destroyed (both sides) and new ones are refused by closing
 *   them at once, until `restore()`. What a client sees: "Connection terminated unexpectedly",
 *   then ECONNRESET on every reconnect.
 * - `freeze()`: open connections stay up but nothing is forwarded either way, and new ones are
 *   accepted and never answered: a server that stopped responding. Clients only notice through
 *   their own timeouts.
 * - `restore()`: forwarding resumes for new connections (frozen ones are destroyed, as a real
 *   recovery would break them).
 */
import net from 'node:net';

export interface TcpProxy {
  /** `postgres://...` URL through the proxy for a database URL on the target. */
  urlFor(dbUrl: string): string;
  readonly port: number;
  readonly mode: 'open' | 'cut' | 'frozen';
  /** Connections accepted since start (a reconnect storm shows here). */
  readonly accepted: number;
  cut(): void;
  freeze(): void;
  restore(): void;
  /** cut() for `ms`, then restore(). */
  cutFor(ms: number): Promise<void>;
  close(): Promise<void>;
}

export async function startTcpProxy(target: { host: string; port: number }): Promise<TcpProxy> {
  let mode: 'open' | 'cut' | 'frozen' = 'open';
  let accepted = 0;
  const pairs = new Set<{ client: net.Socket; upstream: net.Socket | undefined }>();

  const server = net.createServer((client) => {
    accepted++;
    client.on('error', () => undefined);
    if (mode === 'cut') {
      client.destroy();
      return;
    }
    const pair: { client: net.Socket; upstream: net.Socket | undefined } = { client, upstream: undefined };
    pairs.add(pair);
    client.on('close', () => {
      pair.upstream?.destroy();
      pairs.delete(pair);
    });
    if (mode === 'frozen') {
      client.pause(); // accepted, never answered
      return;
    }
    const upstream = net.connect(target.port, target.host);
    pair.upstream = upstream;
    upstream.on('error', () => client.destroy());
    upstream.on('close', () => client.destroy());
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;

  const destroyAll = () => {
    for (const p of [...pairs]) {
      p.upstream?.destroy();
      p.client.destroy();
    }
    pairs.clear();
  };

  const proxy: TcpProxy = {
    port,
    get mode() {
      return mode;
    },
    get accepted() {
      return accepted;
    },
    urlFor(dbUrl: string) {
      const u = new URL(dbUrl);
      u.hostname = '127.0.0.1';
      u.port = String(port);
      return u.toString();
    },
    cut() {
      mode = 'cut';
      destroyAll();
    },
    freeze() {
      mode = 'frozen';
      for (const p of pairs) {
        p.client.unpipe();
        p.upstream?.unpipe();
        p.client.pause();
        p.upstream?.pause();
      }
    },
    restore() {
      if (mode === 'frozen') destroyAll();
      mode = 'open';
    },
    async cutFor(ms: number) {
      proxy.cut();
      await new Promise((r) => setTimeout(r, ms));
      proxy.restore();
    },
    async close() {
      destroyAll();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  return proxy;
}

/** The host and port of a postgres:// URL (the proxy's target). */
export function pgTarget(url: string): { host: string; port: number } {
  const u = new URL(url);
  return { host: u.hostname || '127.0.0.1', port: Number(u.port || 5432) };
}
