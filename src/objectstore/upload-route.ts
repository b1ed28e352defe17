/**
 * The HTTP end of signed uploads (embedded profile): `PUT <path>?key=&expires=&max_bytes=&sig=`
 * with the raw body. Register with `await app.register(uploadRoute, opts)` or call
 * `uploadRoute(app, opts)` before `app.ready()`; it runs in its own encapsulated context (it
 * replaces the body parsers there so the body streams instead of being buffered).
 *
 * Order of checks: the signature (403 UPLOAD_SIGNATURE_INVALID / UPLOAD_URL_EXPIRED) before a
 * single body byte is read; then a declared Content-Length over the cap (413 PAYLOAD_TOO_LARGE)
 * before reading; then the body streams into `store.putStream` with the cap counted as bytes
 * arrive (413 as soon as it is exceeded). The store writes atomically, so a refused, oversized or
 * aborted upload leaves nothing under the key. After an error reply the rest of an unread body is
 * read and discarded, up to `drainBytes` (default 1 MiB) and `drainMs` (default 5 s); past either
 * the connection is destroyed. (Closing at once would make most clients fail with EPIPE or
 * ECONNRESET before they read the 413/403.) The cap is min(signed max_bytes, route maxBytes). A repeat upload to the
 * same key before expiry replaces the object, as an S3 presigned PUT would; the caller that
 * finalizes (e.g. UDF bundle finalize) must hash what it reads, not trust the upload.
 * Success: 200 `{key, size, sha256}`.
 */
import type { IncomingMessage } from 'node:http';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { TraceError, isTraceError } from '../core/errors.js';
import type { ObjectStore, PutResult } from './objectstore.js';
import { verifyUploadSignature } from './signed-upload.js';

export const DEFAULT_UPLOAD_PATH = '/v1/uploads';

export interface UploadRouteOptions {
  store: ObjectStore;
  secret: string | Uint8Array;
  /** Route-wide cap in bytes; each URL's signed max_bytes may only lower it. */
  maxBytes: number;
  /** Default `/v1/uploads`. */
  path?: string;
  /** Clock for expiry checks (tests). */
  now?: () => Date;
  /** After an error reply, how much of an unread body is discarded before the connection is cut. */
  drainBytes?: number;
  drainMs?: number;
  /** Called after the object is stored, before the reply. */
  onUploaded?: (result: PutResult) => Promise<void> | void;
}

/** Reads and drops what is left of a request body, within bounds; then the socket is cut. */
function discardRest(raw: IncomingMessage, maxBytes: number, maxMs: number): void {
  if (raw.complete || raw.destroyed) return;
  let seen = 0;
  const cut = () => {
    clearTimeout(timer);
    raw.socket.destroy();
  };
  const timer = setTimeout(cut, maxMs);
  timer.unref();
  raw.on('data', (chunk: Buffer) => {
    seen += chunk.length;
    if (seen > maxBytes) cut();
  });
  raw.once('end', () => clearTimeout(timer));
  raw.once('close', () => clearTimeout(timer));
  raw.once('error', () => clearTimeout(timer));
  raw.resume();
}

function toTraceError(e: unknown): TraceError {
  if (isTraceError(e)) return e;
  return new TraceError(500, 'INTERNAL', 'upload failed');
}

export async function uploadRoute(app: FastifyInstance, opts: UploadRouteOptions): Promise<void> {
  if (!Number.isSafeInteger(opts.maxBytes) || opts.maxBytes < 0) {
    throw new TraceError(500, 'OBJECT_STORE_MISUSE', 'uploadRoute maxBytes must be a non-negative integer');
  }
  const path = opts.path ?? DEFAULT_UPLOAD_PATH;
  const now = opts.now ?? (() => new Date());
  const drainBytes = opts.drainBytes ?? 1024 * 1024;
  const drainMs = opts.drainMs ?? 5000;

  void app.register(async (scope) => {
    // Leave the body unread for the handler, whatever its content type.
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser('*', (_req, _payload, done) => done(null, undefined));

    scope.put(path, async (req: FastifyRequest, reply: FastifyReply) => {
      try {
        const grant = verifyUploadSignature(req.query, opts.secret, now());
        const cap = Math.min(grant.maxBytes, opts.maxBytes);
        const declared = req.headers['content-length'];
        if (declared !== undefined && Number(declared) > cap) throw new TraceError(413, 'PAYLOAD_TOO_LARGE', 'upload body is larger than allowed');
        // Do not destroy the socket when the store stops reading early: the reply must still go out.
        const it = req.raw.iterator({ destroyOnReturn: false }) as AsyncIterator<Uint8Array>;
        const body: AsyncIterable<Uint8Array> = { [Symbol.asyncIterator]: () => it };
        let result: PutResult;
        try {
          result = await opts.store.putStream(grant.key, body, { maxBytes: cap });
        } catch (e) {
          if (isTraceError(e) && e.code === 'OBJECT_TOO_LARGE') throw new TraceError(413, 'PAYLOAD_TOO_LARGE', 'upload body is larger than allowed');
          throw e;
        }
        if (opts.onUploaded) await opts.onUploaded(result);
        return reply.status(200).send({ key: result.key, size: result.size, sha256: result.sha256 });
      } catch (e) {
        // A client that went away mid-body is not a server fault.
        const te = !isTraceError(e) && req.raw.destroyed && !req.raw.complete
          ? new TraceError(400, 'UPLOAD_ABORTED', 'upload was interrupted')
          : toTraceError(e);
        if (te.status >= 500) req.log.error({ code: te.code, err: e instanceof Error ? e.message : 'unknown' }, 'upload failed');
        discardRest(req.raw, drainBytes, drainMs);
        return reply.status(te.status).send(te.toJSON());
      }
    });
  });
}
