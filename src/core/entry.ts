/**
 * Starting one of this project's modules in another process or worker thread. From a build
 * (`dist/`) the module is the compiled `.js` file; from the sources (tsx, tests, a development
 * checkout) it is the `.ts` file, loaded through tsx's loader, which is resolved to an absolute
 * URL so the new process finds it whatever its working directory.
 */
import { fileURLToPath } from 'node:url';
import { Worker, type WorkerOptions } from 'node:worker_threads';

export interface ModuleEntry {
  /** Absolute path of the module file. */
  file: string;
  /** Node flags the module needs (tsx's loader when running from the sources). */
  execArgv: string[];
}

/**
 * The entry of `relJs` (a path ending in `.js`, relative to the module whose `import.meta.url`
 * is `fromUrl`).
 */
export function moduleEntry(fromUrl: string, relJs: string): ModuleEntry {
  const fromSource = fromUrl.endsWith('.ts');
  const url = new URL(fromSource ? relJs.replace(/\.js$/, '.ts') : relJs, fromUrl);
  return { file: fileURLToPath(url), execArgv: fromSource ? ['--import', import.meta.resolve('tsx')] : [] };
}

/**
 * Starts `relJs` (relative to the module whose `import.meta.url` is `fromUrl`) as a worker
 * thread. From the sources, a small bootstrap registers tsx in the worker first: Node does not
 * apply a loader given in a worker's execArgv to the worker's own entry module.
 */
export function startWorkerThread(fromUrl: string, relJs: string, options: Omit<WorkerOptions, 'eval'> = {}): Worker {
  if (!fromUrl.endsWith('.ts')) return new Worker(new URL(relJs, fromUrl), options);
  const file = new URL(relJs.replace(/\.js$/, '.ts'), fromUrl).href;
  const api = import.meta.resolve('tsx/esm/api');
  const boot = `import(${JSON.stringify(api)}).then((m) => { m.register(); return import(${JSON.stringify(file)}); })`;
  return new Worker(boot, { ...options, eval: true });
}
