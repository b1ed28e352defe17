/**
 * A tiny Chrome DevTools Protocol client for tests: headless Chromium (the Debian `chromium`
 * package) driven over `--remote-debugging-pipe` (fd 3 in, fd 4 out, NUL-separated JSON), so no
 * WebSocket library and no browser download are needed.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type { Readable, Writable } from 'node:stream';

export function chromiumPath(): string | undefined {
  for (const name of ['chromium', 'chromium-browser']) {
    const r = spawnSync('which', [name], { encoding: 'utf8' });
    if (r.status === 0 && r.stdout.trim() !== '') return r.stdout.trim();
  }
  return undefined;
}

type Pending = { resolve: (v: any) => void; reject: (e: Error) => void; method: string };
type Listener = (params: any, sessionId: string | undefined) => void;

export class Browser {
  #nextId = 1;
  readonly #pending = new Map<number, Pending>();
  readonly #listeners = new Set<{ method: string; fn: Listener }>();
  #buffer = '';

  private constructor(private readonly proc: ChildProcess, private readonly userDir: string, private readonly out: Writable, input: Readable) {
    input.setEncoding('utf8');
    input.on('data', (chunk: string) => {
      this.#buffer += chunk;
      let i: number;
      while ((i = this.#buffer.indexOf('\0')) >= 0) {
        const msg = JSON.parse(this.#buffer.slice(0, i)) as { id?: number; result?: unknown; error?: { message: string }; method?: string; params?: unknown; sessionId?: string };
        this.#buffer = this.#buffer.slice(i + 1);
        if (msg.id !== undefined) {
          const p = this.#pending.get(msg.id);
          this.#pending.delete(msg.id);
          if (msg.error) p?.reject(new Error(`${p.method}: ${msg.error.message}`));
          else p?.resolve(msg.result);
        } else if (msg.method) {
          for (const l of this.#listeners) if (l.method === msg.method) l.fn(msg.params, msg.sessionId);
        }
      }
    });
    proc.once('exit', () => {
      for (const p of this.#pending.values()) p.reject(new Error('chromium exited'));
      this.#pending.clear();
    });
  }

  static async launch(): Promise<Browser> {
    const bin = chromiumPath();
    if (!bin) throw new Error('chromium is not installed (apt-get install chromium)');
    const userDir = mkdtempSync(join(tmpdir(), 'trace-chromium-'));
    const proc = spawn(bin, [
      '--headless=new', '--remote-debugging-pipe', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run',
      '--no-default-browser-check', '--disable-extensions', '--disable-background-networking', '--disable-sync', '--mute-audio',
      '--hide-scrollbars', `--user-data-dir=${userDir}`, 'about:blank',
    ], { stdio: ['ignore', 'ignore', 'ignore', 'pipe', 'pipe'] });
    const b = new Browser(proc, userDir, proc.stdio[3] as Writable, proc.stdio[4] as Readable);
    await b.send('Browser.getVersion', {}, undefined, 60_000);
    return b;
  }

  send<T = any>(method: string, params: Record<string, unknown> = {}, sessionId?: string, timeoutMs = 60_000): Promise<T> {
    const id = this.#nextId++;
    return new Promise<T>((resolve, reject) => {
      const t = setTimeout(() => {
        this.#pending.delete(id);
        reject(new Error(`${method}: no answer in ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, {
        method,
        resolve: (v) => { clearTimeout(t); resolve(v as T); },
        reject: (e) => { clearTimeout(t); reject(e); },
      });
      this.out.write(`${JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) })}\0`);
    });
  }

  on(method: string, fn: Listener): () => void {
    const l = { method, fn };
    this.#listeners.add(l);
    return () => this.#listeners.delete(l);
  }

  /** A new tab in its own browser context (its own cookie jar). */
  async newPage(): Promise<Page> {
    const { browserContextId } = await this.send<{ browserContextId: string }>('Target.createBrowserContext', { disposeOnDetach: true });
    const { targetId } = await this.send<{ targetId: string }>('Target.createTarget', { url: 'about:blank', browserContextId });
    const { sessionId } = await this.send<{ sessionId: string }>('Target.attachToTarget', { targetId, flatten: true });
    const page = new Page(this, sessionId);
    await page.send('Page.enable');
    await page.send('Runtime.enable');
    await page.send('Network.enable');
    await page.send('Emulation.setDeviceMetricsOverride', { width: 1280, height: 900, deviceScaleFactor: 1, mobile: false });
    return page;
  }

  async close(): Promise<void> {
    if (this.proc.exitCode === null) {
      const exited = new Promise<void>((resolve) => this.proc.once('exit', () => resolve()));
      await this.send('Browser.close', {}, undefined, 10_000).catch(() => this.proc.kill('SIGKILL'));
      await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
      if (this.proc.exitCode === null) this.proc.kill('SIGKILL');
    }
    rmSync(this.userDir, { recursive: true, force: true });
  }
}

export class Page {
  /** Console messages and exceptions seen on this page (a script that ran would show here). */
  readonly consoleMessages: string[] = [];

  constructor(readonly browser: Browser, readonly sessionId: string) {
    browser.on('Runtime.consoleAPICalled', (p, s) => { if (s === sessionId) this.consoleMessages.push(JSON.stringify(p.args)); });
    browser.on('Runtime.exceptionThrown', (p, s) => { if (s === sessionId) this.consoleMessages.push(JSON.stringify(p.exceptionDetails)); });
  }

  send<T = any>(method: string, params: Record<string, unknown> = {}): Promise<T> {
    return this.browser.send<T>(method, params, this.sessionId);
  }

  /** Runs `action` and waits for the next load event of this page. */
  async waitForLoad(action: () => Promise<unknown>, timeoutMs = 60_000): Promise<void> {
    let off: () => void = () => undefined;
    const loaded = new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => { off(); reject(new Error('page did not load in time')); }, timeoutMs);
      off = this.browser.on('Page.loadEventFired', (_p, s) => {
        if (s !== this.sessionId) return;
        clearTimeout(t);
        off();
        resolve();
      });
    });
    await action();
    await loaded;
  }

  async goto(url: string): Promise<void> {
    await this.waitForLoad(async () => {
      const r = await this.send<{ errorText?: string }>('Page.navigate', { url });
      if (r.errorText) throw new Error(`navigation to ${url} failed: ${r.errorText}`);
    });
  }

  /** Evaluates an expression in the page (DevTools evaluation is not subject to the page's CSP). */
  async eval<T = any>(expression: string): Promise<T> {
    const r = await this.send<{ result: { value: T }; exceptionDetails?: unknown }>('Runtime.evaluate', { expression, returnByValue: true, awaitPromise: true });
    if (r.exceptionDetails) throw new Error(`evaluation failed: ${JSON.stringify(r.exceptionDetails)}`);
    return r.result.value;
  }

  url(): Promise<string> {
    return this.eval<string>('location.href');
  }

  text(): Promise<string> {
    return this.eval<string>('document.body.innerText');
  }

  async screenshot(path: string): Promise<void> {
    const { data } = await this.send<{ data: string }>('Page.captureScreenshot', { format: 'png', captureBeyondViewport: true });
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, Buffer.from(data, 'base64'));
  }

  async cookies(): Promise<Array<{ name: string; value: string; httpOnly: boolean; sameSite?: string; secure: boolean; path: string }>> {
    return (await this.send<{ cookies: any[] }>('Network.getCookies', {})).cookies;
  }
}
