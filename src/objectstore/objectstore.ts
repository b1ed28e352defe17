/**
 * Object store interface. URLs are `file:///abs/path/...` (embedded and local profiles) or
 * `s3://bucket/prefix/...` (S3 and S3-compatible stores). Keys are always relative to the
 * store root; callers never build filesystem paths themselves.
 *
 * Keys and prefixes follow src/objectstore/keys.ts (relative, `/`-separated, no empty, `.` or
 * `..` segments, no backslashes, control characters or wildcards, at most 1024 UTF-8 bytes);
 * every method refuses anything else with 400 INVALID_OBJECT_KEY before touching storage.
 * A prefix always names a "directory": `list('a/b')` lists `a/b/...`, never `a/bc`.
 */
import type { Readable } from 'node:stream';

export interface ObjectInfo {
  key: string;
  size: number;
  /** When the object was last written, where the backend reports it. */
  lastModified?: Date;
}

/** What a streamed write stored. */
export interface PutResult {
  key: string;
  size: number;
  /** Hex SHA-256 of the bytes stored, computed while they streamed. */
  sha256: string;
}

export interface PutStreamOptions {
  /** Refuse (413 OBJECT_TOO_LARGE, nothing stored) once more than this many bytes arrived. */
  maxBytes?: number;
  contentType?: string;
}

export interface GetOptions {
  /** Refuse (413 OBJECT_TOO_LARGE) objects larger than this instead of buffering them. */
  maxBytes?: number;
}

/** A body for putStream: a Node Readable or any async iterable of byte chunks. */
export type ByteSource = AsyncIterable<Uint8Array | string>;

export interface ObjectStore {
  /** Root URL of the store, e.g. `file:///home/me/.trace/objects/` or `s3://bucket/prefix/`. */
  readonly rootUrl: string;
  /** Writes the whole object; readers see the old object or the new one, never a part. */
  put(key: string, body: Uint8Array | string): Promise<void>;
  /** Streams a large object in; nothing is visible under `key` unless the whole body arrived. */
  putStream(key: string, body: ByteSource, opts?: PutStreamOptions): Promise<PutResult>;
  /** The whole object; 404 OBJECT_NOT_FOUND when missing. */
  get(key: string, opts?: GetOptions): Promise<Uint8Array>;
  /** The object as a stream; 404 OBJECT_NOT_FOUND when missing. The caller must consume or destroy it. */
  getStream(key: string): Promise<Readable>;
  /** Size (and time) of one object, or null when missing. */
  stat(key: string): Promise<ObjectInfo | null>;
  exists(key: string): Promise<boolean>;
  /** Every object below the prefix (recursive), sorted by key (UTF-8 byte order); `''` lists all. Keys are store keys, not relative to the prefix. */
  list(prefix: string): Promise<ObjectInfo[]>;
  /** Removes one object; a missing object is not an error. */
  delete(key: string): Promise<void>;
  /** Removes every object below a non-empty prefix; returns how many were removed. */
  deletePrefix(prefix: string): Promise<number>;
  /** Absolute URL of a key (`file:///...` or `s3://...`). */
  url(key: string): string;
  /** A view of the objects below a non-empty prefix: its keys are relative to the prefix, and nothing outside it is reachable. */
  child(prefix: string): ObjectStore;
}
