import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as net from 'node:net';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import {
  blockListFromCidrs,
  sendWebhook,
  type HostLookup,
  type PinnedRequest,
  type SendWebhookInput,
} from '../../src/delivery/net/index.js';

const fixtures = new URL('./fixtures/', import.meta.url);
const CA = readFileSync(new URL('ca-cert.pem', fixtures));
const KEY = readFileSync(new URL('server-key.pem', fixtures));
const CERT = readFileSync(new URL('server-cert.pem', fixtures));

interface Hit {
  method: string;
  path: string;
  headers: http.IncomingHttpHeaders;
  body: string;
  servername: string | false | null | undefined;
}

/** One handler for both the HTTPS and the plain HTTP receiver. */
function receiver(hits: Hit[]): http.RequestListener {
  return (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const path = req.url ?? '';
      hits.push({
        method: req.method ?? '',
        path,
        headers: req.headers,
        body: Buffer.concat(chunks).toString('utf8'),
        servername: (req.socket as Partial<TLSSocket>).servername,
      });
      const route = path.split('?')[0];
      switch (route) {
        case '/ok':
          res.writeHead(200, { 'content-type': 'text/plain' }).end('ok');
          return;
        case '/accepted':
          res.writeHead(202).end();
          return;
        case '/redirect':
          res.writeHead(302, { location: `https://hooks.example.com:${httpsPort}/target?leak=LOCATIONSECRET` }).end();
          return;
        case '/fail':
          res.writeHead(500, { 'retry-after': '7' }).end('boom');
          return;
        case '/busy':
          res.writeHead(429).end();
          return;
        case '/req-timeout':
          res.writeHead(408).end();
          return;
        case '/missing':
          res.writeHead(404).end();
          return;
        case '/bad':
          res.writeHead(400).end();
          return;
        case '/slow':
          return; // never answers
        case '/endless': {
          res.writeHead(200);
          const chunk = Buffer.alloc(64 * 1024, 97);
          const timer = setInterval(() => {
            if (res.destroyed || res.writableEnded) clearInterval(timer);
            else res.write(chunk);
          }, 2);
          res.on('close', () => clearInterval(timer));
          return;
        }
        default:
          res.writeHead(200).end();
      }
    });
  };
}

const httpsHits: Hit[] = [];
const httpHits: Hit[] = [];
const proxyHits: string[] = [];
let httpsServer: https.Server;
let httpServer: http.Server;
let proxyServer: net.Server;
let silentTls: net.Server;
let httpsPort = 0;
let httpPort = 0;
let proxyPort = 0;
let silentPort = 0;
const sockets = new Set<net.Socket>();

function listen(server: net.Server): Promise<number> {
  return new Promise((resolve) => {
    server.on('connection', (s: net.Socket) => {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
    });
    server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port));
  });
}

before(async () => {
  httpsServer = https.createServer({ key: KEY, cert: CERT }, receiver(httpsHits));
  httpServer = http.createServer(receiver(httpHits));
  // Records every connection or request a proxy would see; the sender must never come here.
  proxyServer = net.createServer((s) => {
    proxyHits.push('connection');
    s.destroy();
  });
  // Accepts TCP and never speaks TLS: the handshake can only time out.
  silentTls = net.createServer(() => {});
  httpsPort = await listen(httpsServer);
  httpPort = await listen(httpServer);
  proxyPort = await listen(proxyServer);
  silentPort = await listen(silentTls);
});

after(async () => {
  for (const s of sockets) s.destroy();
  await Promise.all([httpsServer, httpServer, proxyServer, silentTls].map((s) => new Promise<void>((r) => s.close(() => r()))));
});

function countingLookup(answers: Array<string[]>): HostLookup & { calls: Array<{ host: string; options: unknown }> } {
  const calls: Array<{ host: string; options: unknown }> = [];
  const fn: HostLookup = async (host, options) => {
    calls.push({ host, options });
    const answer = answers[Math.min(calls.length - 1, answers.length - 1)] ?? [];
    return answer.map((address) => ({ address, family: net.isIP(address) }));
  };
  return Object.assign(fn, { calls });
}

const noLookup: HostLookup = async () => {
  throw new Error('lookup must not be called');
};

function base(overrides: Partial<SendWebhookInput> & Pick<SendWebhookInput, 'url'>): SendWebhookInput {
  return {
    body: { delivery_id: 'dlv-1', severity: 'warning', payload: { n: 1 } },
    headers: { 'Idempotency-Key': 'dlv-1' },
    ca: CA,
    timeoutMs: 3000,
    ...overrides,
  };
}

function hitsFor(list: Hit[], key: string): Hit[] {
  return list.filter((h) => h.headers['idempotency-key'] === key);
}

describe('sendWebhook: resolve once, check every address, pin the connection', () => {
  it('refuses a public-looking name that resolves to 127.0.0.1 (terminal, nothing sent)', async () => {
    const lookup = countingLookup([['127.0.0.1']]);
    const r = await sendWebhook(base({ url: `https://hooks.example.com:${httpsPort}/ok`, lookup, headers: { 'Idempotency-Key': 'refuse-1' } }));
    assert.equal(r.outcome, 'terminal');
    assert.match(r.error ?? '', /forbidden address.*loopback/);
    assert.equal(r.status, undefined);
    assert.equal(lookup.calls.length, 1);
    assert.deepEqual(lookup.calls[0], { host: 'hooks.example.com', options: { all: true, verbatim: true } });
    assert.equal(hitsFor(httpsHits, 'refuse-1').length, 0);
  });

  it('refuses metadata and private answers, including IPv6 forms', async () => {
    for (const answer of [['169.254.169.254'], ['10.0.0.7'], ['::ffff:7f00:1'], ['fd00:ec2::254'], ['64:ff9b::a9fe:a9fe'], ['0.0.0.0']]) {
      const r = await sendWebhook(base({ url: `https://hooks.example.com:${httpsPort}/ok`, lookup: countingLookup([answer]), headers: { 'Idempotency-Key': 'refuse-2' } }));
      assert.equal(r.outcome, 'terminal', answer.join());
      assert.match(r.error ?? '', /forbidden address/);
    }
    assert.equal(hitsFor(httpsHits, 'refuse-2').length, 0);
  });

  it('a name resolving to [public, private] is refused and nothing is sent', async () => {
    const sent: PinnedRequest[] = [];
    const transport = async (req: PinnedRequest) => {
      sent.push(req);
      return { kind: 'response' as const, status: 200 };
    };
    for (const answer of [['93.184.216.34', '10.0.0.5'], ['10.0.0.5', '93.184.216.34'], ['2606:4700:4700::1111', 'fe80::1'], ['93.184.216.34', '127.0.0.1']]) {
      const lookup = countingLookup([answer]);
      const r = await sendWebhook(base({ url: 'https://hooks.example.com/ok', lookup, transport }));
      assert.equal(r.outcome, 'terminal', answer.join());
      assert.match(r.error ?? '', /forbidden address/);
      assert.equal(lookup.calls.length, 1);
    }
    assert.equal(sent.length, 0);
  });

  it('DNS rebinding: the name is resolved once and the checked address is the one used', async () => {
    const sent: PinnedRequest[] = [];
    const transport = async (req: PinnedRequest) => {
      sent.push(req);
      return { kind: 'response' as const, status: 200 };
    };
    const lookup = countingLookup([['93.184.216.34'], ['127.0.0.1']]);
    const r = await sendWebhook(base({ url: 'https://hooks.example.com/hook?x=1', lookup, transport }));
    assert.equal(r.outcome, 'delivered');
    assert.equal(r.address, '93.184.216.34');
    assert.equal(lookup.calls.length, 1);
    assert.equal(sent.length, 1);
    const req = sent[0]!;
    assert.equal(req.address, '93.184.216.34');
    assert.equal(req.family, 4);
    assert.equal(req.hostname, 'hooks.example.com');
    assert.equal(req.port, 443);
    assert.equal(req.path, '/hook?x=1');
    assert.equal(req.headers.Host, 'hooks.example.com');
    assert.equal(req.headers['Idempotency-Key'], 'dlv-1');
  });

  it('DNS rebinding over a real socket: a later answer (metadata IP) is never consulted', async () => {
    const lookup = countingLookup([['127.0.0.1'], ['169.254.169.254']]);
    const r = await sendWebhook(
      base({ url: `https://hooks.example.com:${httpsPort}/ok`, lookup, allowHttpLoopback: true, headers: { 'Idempotency-Key': 'rebind-real' } }),
    );
    assert.equal(r.outcome, 'delivered', r.error);
    assert.equal(lookup.calls.length, 1);
    assert.equal(hitsFor(httpsHits, 'rebind-real').length, 1);
  });

  it('an operator deny list (BlockList) refuses matching answers', async () => {
    const deniedAddresses = blockListFromCidrs(['93.184.216.0/24', '2606:4700::/32']);
    for (const answer of [['93.184.216.34'], ['2606:4700:4700::1111']]) {
      const r = await sendWebhook(base({ url: 'https://hooks.example.com/', lookup: countingLookup([answer]), deniedAddresses }));
      assert.equal(r.outcome, 'terminal');
      assert.match(r.error ?? '', /operator-denied/);
    }
    assert.throws(() => blockListFromCidrs(['10.0.0.0/33']));
    assert.throws(() => blockListFromCidrs(['not-an-ip/8']));
  });

  it('DNS failures and empty answers are retryable', async () => {
    const failing: HostLookup = async () => {
      throw Object.assign(new Error('nope'), { code: 'ENOTFOUND' });
    };
    const a = await sendWebhook(base({ url: 'https://hooks.example.com/', lookup: failing }));
    assert.deepEqual([a.outcome, a.error], ['retryable', 'DNS lookup failed (ENOTFOUND)']);
    const b = await sendWebhook(base({ url: 'https://hooks.example.com/', lookup: countingLookup([[]]) }));
    assert.equal(b.outcome, 'retryable');
    const hanging: HostLookup = () => new Promise(() => {});
    const started = Date.now();
    const c = await sendWebhook(base({ url: 'https://hooks.example.com/', lookup: hanging, timeoutMs: 200 }));
    assert.deepEqual([c.outcome, c.error], ['retryable', 'DNS lookup timed out']);
    assert.ok(Date.now() - started < 2000);
  });
});

describe('sendWebhook: real HTTPS receiver on 127.0.0.1 (development loopback switch on)', () => {
  const dev = { allowHttpLoopback: true };

  it('delivers over https with SNI, Host, Idempotency-Key and the JSON body', async () => {
    const lookup = countingLookup([['127.0.0.1']]);
    const r = await sendWebhook(
      base({ ...dev, url: `https://hooks.example.com:${httpsPort}/ok?sig=abc`, lookup, headers: { 'Idempotency-Key': 'deliver-1', 'X-Trace-Org': 'org-1' } }),
    );
    assert.equal(r.outcome, 'delivered', r.error);
    assert.equal(r.status, 200);
    assert.equal(r.address, '127.0.0.1');
    assert.equal(typeof r.durationMs, 'number');
    const [hit] = hitsFor(httpsHits, 'deliver-1');
    assert.ok(hit);
    assert.equal(hit.method, 'POST');
    assert.equal(hit.path, '/ok?sig=abc');
    assert.equal(hit.headers.host, `hooks.example.com:${httpsPort}`);
    assert.equal(hit.headers['x-trace-org'], 'org-1');
    assert.equal(hit.headers['content-type'], 'application/json');
    assert.equal(hit.headers['user-agent'], 'Trace-Delivery/1');
    assert.equal(hit.servername, 'hooks.example.com');
    assert.deepEqual(JSON.parse(hit.body), { delivery_id: 'dlv-1', severity: 'warning', payload: { n: 1 } });
  });

  it('delivers to an https IP literal without any lookup (certificate checked against the IP)', async () => {
    const r = await sendWebhook(base({ ...dev, url: `https://127.0.0.1:${httpsPort}/accepted`, lookup: noLookup, headers: { 'Idempotency-Key': 'literal-1' } }));
    assert.equal(r.outcome, 'delivered', r.error);
    assert.equal(r.status, 202);
    const [hit] = hitsFor(httpsHits, 'literal-1');
    assert.equal(hit?.headers.host, `127.0.0.1:${httpsPort}`);
    assert.ok(!hit?.servername);
  });

  it('delivers over plain http to localhost and loopback literals only with the switch on', async () => {
    const a = await sendWebhook(base({ ...dev, url: `http://localhost:${httpPort}/ok`, lookup: countingLookup([['127.0.0.1']]), headers: { 'Idempotency-Key': 'plain-1' } }));
    assert.equal(a.outcome, 'delivered', a.error);
    const b = await sendWebhook(base({ ...dev, url: `http://127.0.0.1:${httpPort}/ok`, lookup: noLookup, headers: { 'Idempotency-Key': 'plain-2' } }));
    assert.equal(b.outcome, 'delivered', b.error);
    assert.equal(hitsFor(httpHits, 'plain-1').length, 1);
    assert.equal(hitsFor(httpHits, 'plain-2').length, 1);
    assert.equal(hitsFor(httpHits, 'plain-1')[0]?.headers.host, `localhost:${httpPort}`);

    // Switch off: refused before any I/O.
    const c = await sendWebhook(base({ url: `http://localhost:${httpPort}/ok`, lookup: noLookup, headers: { 'Idempotency-Key': 'plain-3' } }));
    assert.equal(c.outcome, 'terminal');
    // Switch on, but localhost resolving to a non-loopback address is refused.
    const d = await sendWebhook(base({ ...dev, url: `http://localhost:${httpPort}/ok`, lookup: countingLookup([['10.0.0.1']]), headers: { 'Idempotency-Key': 'plain-4' } }));
    assert.equal(d.outcome, 'terminal');
    const e = await sendWebhook(base({ ...dev, url: `http://localhost:${httpPort}/ok`, lookup: countingLookup([['93.184.216.34']]), headers: { 'Idempotency-Key': 'plain-5' } }));
    assert.equal(e.outcome, 'terminal');
    assert.match(e.error ?? '', /plain http/);
    assert.equal(hitsFor(httpHits, 'plain-3').length + hitsFor(httpHits, 'plain-4').length + hitsFor(httpHits, 'plain-5').length, 0);
  });

  it('a 302 is a terminal failure and the Location is not followed or reported', async () => {
    const lookup = countingLookup([['127.0.0.1']]);
    const r = await sendWebhook(base({ ...dev, url: `https://hooks.example.com:${httpsPort}/redirect`, lookup, headers: { 'Idempotency-Key': 'redirect-1' } }));
    assert.equal(r.outcome, 'terminal');
    assert.equal(r.status, 302);
    assert.match(r.error ?? '', /redirect/);
    assert.doesNotMatch(r.error ?? '', /LOCATIONSECRET|target/);
    assert.equal(httpsHits.filter((h) => h.path.startsWith('/target')).length, 0);
    assert.equal(lookup.calls.length, 1);
  });

  it('maps statuses: 500/429/408 retryable (with Retry-After), 404/400 terminal', async () => {
    const cases: Array<[string, string, number]> = [
      ['/fail', 'retryable', 500],
      ['/busy', 'retryable', 429],
      ['/req-timeout', 'retryable', 408],
      ['/missing', 'terminal', 404],
      ['/bad', 'terminal', 400],
    ];
    for (const [path, outcome, status] of cases) {
      const r = await sendWebhook(base({ ...dev, url: `https://hooks.example.com:${httpsPort}${path}`, lookup: countingLookup([['127.0.0.1']]) }));
      assert.equal(r.outcome, outcome, path);
      assert.equal(r.status, status, path);
      if (path === '/fail') assert.equal(r.retryAfterMs, 7000);
    }
  });

  it('a receiver that never answers times out as retryable within the budget', async () => {
    const started = Date.now();
    const r = await sendWebhook(base({ ...dev, url: `https://hooks.example.com:${httpsPort}/slow`, lookup: countingLookup([['127.0.0.1']]), timeoutMs: 400 }));
    const took = Date.now() - started;
    assert.deepEqual([r.outcome, r.error], ['retryable', 'timed out']);
    assert.ok(took >= 350 && took < 2000, `took ${took} ms`);
  });

  it('a TLS handshake that never completes hits the connect timeout', async () => {
    const started = Date.now();
    const r = await sendWebhook(
      base({ ...dev, url: `https://hooks.example.com:${silentPort}/ok`, lookup: countingLookup([['127.0.0.1']]), connectTimeoutMs: 200, timeoutMs: 4000 }),
    );
    const took = Date.now() - started;
    assert.deepEqual([r.outcome, r.error], ['retryable', 'connect timed out']);
    assert.ok(took < 3000, `took ${took} ms`); // well under the 4 s send timeout
  });

  it('reads at most maxResponseBytes of an endless 200 body and still reports delivered promptly', async () => {
    const started = Date.now();
    const r = await sendWebhook(base({ ...dev, url: `https://hooks.example.com:${httpsPort}/endless`, lookup: countingLookup([['127.0.0.1']]), maxResponseBytes: 1024, timeoutMs: 4000 }));
    assert.equal(r.outcome, 'delivered', r.error);
    assert.equal(r.status, 200);
    assert.ok(Date.now() - started < 3500, 'delivered before the 4 s send timeout');
  });

  it('verifies the certificate against the URL host name, not the IP', async () => {
    const wrongName = await sendWebhook(base({ ...dev, url: `https://other.example.org:${httpsPort}/ok`, lookup: countingLookup([['127.0.0.1']]), headers: { 'Idempotency-Key': 'tls-1' } }));
    assert.equal(wrongName.outcome, 'retryable');
    assert.match(wrongName.error ?? '', /ERR_TLS_CERT_ALTNAME_INVALID/);
    const noCa = await sendWebhook({ ...base({ ...dev, url: `https://hooks.example.com:${httpsPort}/ok`, lookup: countingLookup([['127.0.0.1']]), headers: { 'Idempotency-Key': 'tls-2' } }), ca: undefined });
    assert.equal(noCa.outcome, 'retryable');
    assert.match(noCa.error ?? '', /network error/);
    assert.equal(hitsFor(httpsHits, 'tls-1').length + hitsFor(httpsHits, 'tls-2').length, 0);
  });

  it('falls back to the next checked address when connecting to the first fails', async () => {
    // Nothing listens on 127.0.0.2 (the receiver is bound to 127.0.0.1), so that connect is refused.
    const r = await sendWebhook(
      base({ ...dev, url: `https://hooks.example.com:${httpsPort}/ok`, lookup: countingLookup([['127.0.0.2', '127.0.0.1']]), headers: { 'Idempotency-Key': 'fallback-1' } }),
    );
    assert.equal(r.outcome, 'delivered', r.error);
    assert.equal(r.address, '127.0.0.1');
    assert.equal(hitsFor(httpsHits, 'fallback-1').length, 1);
  });

  it('ignores proxy environment variables', async () => {
    const names = ['HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy', 'ALL_PROXY', 'all_proxy', 'NO_PROXY', 'no_proxy', 'NODE_USE_ENV_PROXY'];
    const saved = new Map(names.map((n) => [n, process.env[n]]));
    const proxy = `http://127.0.0.1:${proxyPort}`;
    Object.assign(process.env, {
      HTTPS_PROXY: proxy, https_proxy: proxy, HTTP_PROXY: proxy, http_proxy: proxy, ALL_PROXY: proxy, all_proxy: proxy,
      NODE_USE_ENV_PROXY: '1',
    });
    delete process.env.NO_PROXY;
    delete process.env.no_proxy;
    try {
      const a = await sendWebhook(base({ ...dev, url: `https://hooks.example.com:${httpsPort}/ok`, lookup: countingLookup([['127.0.0.1']]), headers: { 'Idempotency-Key': 'proxy-1' } }));
      const b = await sendWebhook(base({ ...dev, url: `http://localhost:${httpPort}/ok`, lookup: countingLookup([['127.0.0.1']]), headers: { 'Idempotency-Key': 'proxy-2' } }));
      assert.equal(a.outcome, 'delivered', a.error);
      assert.equal(b.outcome, 'delivered', b.error);
    } finally {
      for (const [n, v] of saved) {
        if (v === undefined) delete process.env[n];
        else process.env[n] = v;
      }
    }
    assert.equal(proxyHits.length, 0);
    assert.equal(hitsFor(httpsHits, 'proxy-1').length, 1);
    assert.equal(hitsFor(httpHits, 'proxy-2').length, 1);
  });

  it('an abort signal stops the send as retryable', async () => {
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 100);
    const started = Date.now();
    const r = await sendWebhook(base({ ...dev, url: `https://hooks.example.com:${httpsPort}/slow`, lookup: countingLookup([['127.0.0.1']]), signal: ac.signal, timeoutMs: 4000 }));
    assert.deepEqual([r.outcome, r.error], ['retryable', 'send aborted']);
    assert.ok(Date.now() - started < 3000, 'stopped by the abort, not the 4 s send timeout');
  });
});

describe('sendWebhook: static refusals happen before any I/O', () => {
  it('refuses bad headers, missing Idempotency-Key, oversized and non-object bodies', async () => {
    const lookup = countingLookup([['127.0.0.1']]);
    const url = `https://hooks.example.com:${httpsPort}/ok`;
    const cases: Array<Partial<SendWebhookInput>> = [
      { headers: { 'Idempotency-Key': 'static-1', Host: 'evil.example.com' } },
      { headers: { 'Idempotency-Key': 'static-2', 'Proxy-Authorization': 'x' } },
      { headers: {} },
      { headers: { 'Idempotency-Key': 'static-3' }, body: { blob: 'x'.repeat(300 * 1024) } },
      { headers: { 'Idempotency-Key': 'static-4' }, body: { blob: 'x'.repeat(2000) }, maxRequestBytes: 1000 },
      { headers: { 'Idempotency-Key': 'static-5' }, body: [] as unknown as Record<string, unknown> },
      { headers: { 'Idempotency-Key': 'static-6' }, body: { n: 10n } },
      { url: `https://user:pw@hooks.example.com:${httpsPort}/ok`, headers: { 'Idempotency-Key': 'static-7' } },
      { url: `http://hooks.example.com:${httpPort}/ok`, headers: { 'Idempotency-Key': 'static-8' } },
    ];
    for (const c of cases) {
      const r = await sendWebhook(base({ url, allowHttpLoopback: true, lookup, ...c }));
      assert.equal(r.outcome, 'terminal', JSON.stringify(Object.keys(c)));
      assert.ok(r.error);
    }
    assert.equal(lookup.calls.length, 0);
    assert.equal(httpsHits.filter((h) => String(h.headers['idempotency-key'] ?? '').startsWith('static-')).length, 0);
  });

  it('logs scheme, host and port only: never path, query, headers or body', async () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        lines.push(chunk.toString('utf8'));
        cb();
      },
    });
    const logger = pino({ level: 'info' }, sink);
    const r = await sendWebhook(
      base({
        allowHttpLoopback: true,
        url: `https://hooks.example.com:${httpsPort}/ok/PATHSECRET?token=QUERYSECRET`,
        lookup: countingLookup([['127.0.0.1']]),
        headers: { 'Idempotency-Key': 'log-1', Authorization: 'Bearer HEADERSECRET' },
        body: { secret: 'BODYSECRET' },
        logger,
      }),
    );
    assert.equal(r.outcome, 'delivered', r.error);
    const text = lines.join('');
    assert.match(text, new RegExp(`https://hooks\\.example\\.com:${httpsPort}`));
    assert.match(text, /"outcome":"delivered"/);
    assert.doesNotMatch(text, /PATHSECRET|QUERYSECRET|HEADERSECRET|BODYSECRET/);
  });
});
