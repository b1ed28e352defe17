/**
 * Object store interface. URLs are `file:///abs/path/...` (embedded and local profiles) or
 * `s3://bucket/prefix/...` (S3 and S3-compatible stores). Keys are always relative to the
 * store root; callers never build filesystem paths themselves.
 */
export interface ObjectInfo {
  key: string;
  size: number;
}

export interface ObjectStore {
  /** Root URL of the store, e.g. `file:///home/me/.trace/objects/` or `s3://bucket/prefix/`. */
  readonly rootUrl: string;
  put(key: string, body: Uint8Array | string): Promise<void>;
  get(key: string): Promise<Uint8Array>;
  exists(key: string): Promise<boolean>;
  list(prefix: string): Promise<ObjectInfo[]>;
  delete(key: string): Promise<void>;
  /** Absolute URL of a key (`file:///...` or `s3://...`). */
  url(key: string): string;
}
