/**
 * The object store on a local folder (embedded and local-services profiles).
 *
 * - A key maps to `<root>/<key>`. Keys are validated by keys.ts first, so the path is lexically
 *   inside the root; in addition every operation resolves the real path (symlinks included) and
 *   refuses with 403 OBJECT_PATH_ESCAPE anything that would read, write or list outside the view's
 *   directory. Symlinks that stay inside it are followed; the final open uses O_NOFOLLOW on the
 *   already-resolved path. (A process that can write into the folder and swaps a directory for a
 *   symlink between the check and the open can still race it; nothing in Trace creates symlinks.)
 * - Writes are atomic: bytes go to a `.trace-tmp-*` file in the target directory (fsynced), then
 *   one rename makes the whole object visible. Readers never see a partial object; a failed or
 *   refused write leaves nothing behind. Temp names are reserved, so `list` never shows them.
 * - Directories are created on write and pruned when their last object is deleted. Unlike S3, a
 *   key cannot be both an object and a prefix (`a` and `a/b`): that write fails with 409.
 * - `child(prefix)` is a view confined to `<root>/<prefix>` (symlinks must stay inside it too).
 */
import { constants as fsc, mkdirSync, realpathSync } from 'node:fs';
import { lstat, mkdir, open, readdir, realpath, rename, rmdir, stat, unlink, type FileHandle } from 'node:fs/promises';
import { createHash, randomBytes } from 'node:crypto';
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Readable } from 'node:stream';
import { TraceError } from '../core/errors.js';
import {
  MAX_KEY_BYTES, RESERVED_SEGMENT_PREFIX, canonicalKey, canonicalNonEmptyPrefix, canonicalPrefix, compareKeys, fileDirUrl, keyProblem,
} from './keys.js';
import type { ByteSource, GetOptions, ObjectInfo, ObjectStore, PutResult, PutStreamOptions } from './objectstore.js';
import { checkByteLimit, objectNotFound, objectTooLarge, toBuffer } from './common.js';

const escapeError = () => new TraceError(403, 'OBJECT_PATH_ESCAPE', 'object path leaves the object store root');
const conflictError = () => new TraceError(409, 'OBJECT_KEY_CONFLICT', 'object key collides with an existing prefix or object');

function errCode(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | undefined)?.code;
}

export interface FileObjectStoreOptions {
  /** Confine this instance to the objects below `prefix` (what `child()` uses). */
  prefix?: string;
}

export class FileObjectStore implements ObjectStore {
  /** Real path of the store's root directory. */
  readonly rootDir: string;
  /** This view's prefix inside the store (`''` for the whole store). */
  readonly prefix: string;
  readonly rootUrl: string;
  /** The directory this view may touch: `rootDir/prefix` (lexical), without trailing `/`. */
  private readonly scopeDir: string;

  constructor(rootDir: string, opts: FileObjectStoreOptions = {}) {
    if (typeof rootDir !== 'string' || rootDir === '' || rootDir.includes('\0')) {
      throw new TraceError(500, 'OBJECT_STORE_URL_INVALID', 'object store root must be a directory path');
    }
    const abs = resolve(rootDir);
    mkdirSync(abs, { recursive: true });
    this.rootDir = realpathSync(abs);
    if (this.rootDir === '/' || this.rootDir === sep) {
      throw new TraceError(500, 'OBJECT_STORE_URL_INVALID', 'object store root must not be the filesystem root');
    }
    this.prefix = opts.prefix === undefined ? '' : canonicalPrefix(opts.prefix);
    this.scopeDir = this.prefix === '' ? this.rootDir : join(this.rootDir, this.prefix.slice(0, -1));
    this.rootUrl = fileDirUrl(this.scopeDir);
  }

  child(prefix: string): FileObjectStore {
    const full = this.prefix + canonicalNonEmptyPrefix(prefix);
    if (Buffer.byteLength(full, 'utf8') > MAX_KEY_BYTES) throw new TraceError(400, 'INVALID_OBJECT_KEY', `object prefix is longer than ${MAX_KEY_BYTES} bytes`);
    return new FileObjectStore(this.rootDir, { prefix: full });
  }

  url(key: string): string {
    return pathToFileURL(this.lexicalPath(key)).href;
  }

  /** Directory path of a prefix (lexical, may not exist), e.g. for a DuckDB glob; `''` is this view's root. */
  localDir(prefix: string): string {
    const p = canonicalPrefix(prefix);
    return p === '' ? this.scopeDir : join(this.scopeDir, p.slice(0, -1));
  }

  /**
   * Verified real path of an existing object, for readers that open files in place (DuckDB, the
   * UDF runner). 404 OBJECT_NOT_FOUND when missing, 403 OBJECT_PATH_ESCAPE when it resolves outside.
   */
  async localPath(key: string): Promise<string> {
    const real = await this.resolveExisting(key);
    if (real === null) throw objectNotFound();
    const st = await stat(real);
    if (!st.isFile()) throw objectNotFound();
    return real;
  }

  async put(key: string, body: Uint8Array | string): Promise<void> {
    const bytes = toBuffer(body);
    await this.writeAtomic(key, async (fh) => {
      await fh.writeFile(bytes);
    });
  }

  async putStream(key: string, body: ByteSource, opts: PutStreamOptions = {}): Promise<PutResult> {
    checkByteLimit(opts.maxBytes, 'maxBytes');
    const max = opts.maxBytes ?? Number.POSITIVE_INFINITY;
    return this.writeAtomic(key, async (fh) => {
      const hash = createHash('sha256');
      let size = 0;
      for await (const chunk of body) {
        const buf = toBuffer(chunk);
        size += buf.length;
        if (size > max) throw objectTooLarge();
        hash.update(buf);
        let off = 0;
        while (off < buf.length) off += (await fh.write(buf, off, buf.length - off)).bytesWritten;
      }
      return { key, size, sha256: hash.digest('hex') };
    });
  }

  async get(key: string, opts: GetOptions = {}): Promise<Uint8Array> {
    checkByteLimit(opts.maxBytes, 'maxBytes');
    const fh = await this.openForRead(key);
    try {
      const st = await fh.stat();
      if (opts.maxBytes !== undefined && st.size > opts.maxBytes) throw objectTooLarge();
      const data = await fh.readFile();
      if (opts.maxBytes !== undefined && data.length > opts.maxBytes) throw objectTooLarge();
      return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    } finally {
      await fh.close();
    }
  }

  async getStream(key: string): Promise<Readable> {
    const fh = await this.openForRead(key);
    return fh.createReadStream({ autoClose: true });
  }

  async stat(key: string): Promise<ObjectInfo | null> {
    const real = await this.resolveExisting(key);
    if (real === null) return null;
    const st = await stat(real).catch((e: unknown) => {
      if (errCode(e) === 'ENOENT') return null;
      throw e;
    });
    if (st === null || !st.isFile()) return null;
    return { key, size: st.size, lastModified: st.mtime };
  }

  async exists(key: string): Promise<boolean> {
    return (await this.stat(key)) !== null;
  }

  async list(prefix: string): Promise<ObjectInfo[]> {
    const p = canonicalPrefix(prefix);
    const dir = p === '' ? this.scopeDir : join(this.scopeDir, p.slice(0, -1));
    let real: string;
    try {
      real = await realpath(dir);
    } catch (e) {
      if (errCode(e) === 'ENOENT' || errCode(e) === 'ENOTDIR') return [];
      throw e;
    }
    if (!this.inScope(real)) throw escapeError();
    if (!(await stat(real)).isDirectory()) return [];
    const out: ObjectInfo[] = [];
    await this.walk(real, p, out);
    out.sort((a, b) => compareKeys(a.key, b.key));
    return out;
  }

  async delete(key: string): Promise<void> {
    const lex = this.lexicalPath(key);
    let parent: string;
    try {
      parent = await realpath(dirname(lex));
    } catch (e) {
      if (errCode(e) === 'ENOENT' || errCode(e) === 'ENOTDIR') return;
      throw e;
    }
    if (!this.inScope(parent)) throw escapeError();
    const target = join(parent, basename(lex));
    try {
      const st = await lstat(target);
      if (st.isDirectory()) return; // a prefix, not an object
      await unlink(target);
    } catch (e) {
      if (errCode(e) === 'ENOENT') return;
      throw e;
    }
    await this.prune(dirname(lex));
  }

  async deletePrefix(prefix: string): Promise<number> {
    const p = canonicalNonEmptyPrefix(prefix);
    const objects = await this.list(p);
    for (const o of objects) await this.delete(o.key);
    return objects.length;
  }

  // -------------------------------------------------------------------------------------------

  private lexicalPath(key: string): string {
    canonicalKey(key);
    const full = this.prefix + key;
    if (Buffer.byteLength(full, 'utf8') > MAX_KEY_BYTES) throw new TraceError(400, 'INVALID_OBJECT_KEY', `object key is longer than ${MAX_KEY_BYTES} bytes`);
    return join(this.scopeDir, key);
  }

  private inScope(real: string): boolean {
    return real === this.scopeDir || real.startsWith(this.scopeDir + sep);
  }

  /** Real path of the key if something exists there (checked to be in scope), else null. */
  private async resolveExisting(key: string): Promise<string | null> {
    const lex = this.lexicalPath(key);
    let real: string;
    try {
      real = await realpath(lex);
    } catch (e) {
      const code = errCode(e);
      if (code === 'ENOENT' || code === 'ENOTDIR') return null;
      if (code === 'ELOOP') throw escapeError();
      throw e;
    }
    if (!this.inScope(real)) throw escapeError();
    return real;
  }

  private async openForRead(key: string): Promise<FileHandle> {
    const real = await this.resolveExisting(key);
    if (real === null) throw objectNotFound();
    let fh: FileHandle;
    try {
      fh = await open(real, fsc.O_RDONLY | fsc.O_NOFOLLOW);
    } catch (e) {
      const code = errCode(e);
      if (code === 'ENOENT' || code === 'EISDIR') throw objectNotFound();
      if (code === 'ELOOP') throw escapeError();
      throw e;
    }
    const st = await fh.stat();
    if (!st.isFile()) {
      await fh.close();
      throw objectNotFound();
    }
    return fh;
  }

  /**
   * Real directory a write of `key` lands in, created if needed, verified to be in scope. The
   * deepest existing ancestor is resolved first, so mkdir never runs through a symlink that
   * leaves the scope.
   */
  private async prepareParent(key: string): Promise<{ dir: string; name: string }> {
    const lex = this.lexicalPath(key);
    const parentLex = dirname(lex);
    const { ancestor, real } = await this.deepestExisting(parentLex);
    const rest = relative(ancestor, parentLex);
    const dir = rest === '' ? real : join(real, rest);
    if (!this.inScope(dir)) throw escapeError();
    const st = await stat(real);
    if (!st.isDirectory()) throw conflictError();
    if (rest !== '') {
      try {
        await mkdir(dir, { recursive: true });
      } catch (e) {
        if (errCode(e) === 'EEXIST' || errCode(e) === 'ENOTDIR') throw conflictError();
        throw e;
      }
    }
    return { dir, name: lex.slice(parentLex.length + 1) };
  }

  /** The deepest existing directory on the lexical path `dir` (not above the root) and its real path. */
  private async deepestExisting(dir: string): Promise<{ ancestor: string; real: string }> {
    for (let ancestor = dir; ; ancestor = dirname(ancestor)) {
      try {
        return { ancestor, real: await realpath(ancestor) };
      } catch (e) {
        const code = errCode(e);
        if (code === 'ENOTDIR') throw conflictError();
        if (code !== 'ENOENT') throw e;
        if (ancestor === this.rootDir || !ancestor.startsWith(this.rootDir + sep)) {
          throw new TraceError(503, 'OBJECT_STORE_UNAVAILABLE', 'object store root directory is missing');
        }
      }
    }
  }

  private async writeAtomic<R>(key: string, fill: (fh: FileHandle) => Promise<R>): Promise<R> {
    // A concurrent delete may prune the directory between mkdir and open: retry a few times.
    for (let attempt = 1; ; attempt++) {
      const { dir, name } = await this.prepareParent(key);
      const tmp = join(dir, `${RESERVED_SEGMENT_PREFIX}${randomBytes(8).toString('hex')}`);
      let fh: FileHandle;
      try {
        fh = await open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o644);
      } catch (e) {
        if (errCode(e) === 'ENOENT' && attempt < 3) continue;
        throw e;
      }
      let result: R;
      try {
        try {
          result = await fill(fh);
          await fh.sync();
        } finally {
          await fh.close();
        }
        await rename(tmp, join(dir, name)).catch((e: unknown) => {
          const code = errCode(e);
          if (code === 'EISDIR' || code === 'ENOTEMPTY' || code === 'EEXIST' || code === 'ENOTDIR') throw conflictError();
          throw e;
        });
      } catch (e) {
        await unlink(tmp).catch(() => undefined);
        throw e;
      }
      return result;
    }
  }

  private async walk(dir: string, keyPrefix: string, out: ObjectInfo[]): Promise<void> {
    const entries = await readdir(dir, { withFileTypes: true }).catch((e: unknown) => {
      if (errCode(e) === 'ENOENT' || errCode(e) === 'ENOTDIR') return [];
      throw e;
    });
    for (const ent of entries) {
      const name = ent.name;
      if (keyProblem(name) !== null || name.includes('/')) continue; // temp files and unaddressable names
      const key = keyPrefix + name;
      if (Buffer.byteLength(this.prefix + key, 'utf8') > MAX_KEY_BYTES) continue;
      const path = join(dir, name);
      if (ent.isDirectory()) {
        await this.walk(path, `${key}/`, out);
      } else if (ent.isFile()) {
        const st = await stat(path).catch(() => null);
        if (st?.isFile()) out.push({ key, size: st.size, lastModified: st.mtime });
      } else if (ent.isSymbolicLink()) {
        // Symlinked files count when they resolve inside the scope; symlinked directories are not followed.
        const real = await realpath(path).catch(() => null);
        if (real === null || !this.inScope(real)) continue;
        const st = await stat(real).catch(() => null);
        if (st?.isFile()) out.push({ key, size: st.size, lastModified: st.mtime });
      }
    }
  }

  /** Removes now-empty directories from `dirLex` up to (not including) this view's directory. */
  private async prune(dirLex: string): Promise<void> {
    let d = dirLex;
    while (d !== this.scopeDir && d.startsWith(this.scopeDir + sep) && isAbsolute(d)) {
      try {
        await rmdir(d);
      } catch {
        return;
      }
      d = dirname(d);
    }
  }
}
