/**
 * Which IP addresses an outbound webhook may never reach.
 *
 * The policy is a deny list for IPv4 and a deny list plus a default deny for IPv6: anything
 * outside global unicast 2000::/3 is refused unless it is one of the IPv4-embedding prefixes
 * (IPv4-mapped, NAT64 64:ff9b::/96), whose embedded IPv4 address is judged instead. 6to4 and
 * Teredo addresses inside 2000::/3 are refused when any IPv4 address they embed is refused.
 *
 * Parsing is done here, byte by byte, rather than trusting a string compare: every spelling of
 * an address (IPv4 in inet_aton forms such as `2130706433`, `0177.0.0.1`, `0x7f.1`, `127.1`;
 * IPv6 with brackets, zone ids, `::` compression, embedded dotted quads, upper case) lands on the
 * same bytes and so on the same verdict. Input that is not an address is refused (fail closed).
 */

export type ForbiddenCategory =
  | 'invalid'
  | 'unspecified'
  | 'loopback'
  | 'private'
  | 'link-local'
  | 'shared'
  | 'multicast'
  | 'broadcast'
  | 'reserved'
  | 'documentation'
  | 'metadata'
  | 'unique-local'
  | 'site-local'
  | 'discard'
  | 'ipv4-compatible'
  | 'nat64-local';

export interface AddressVerdict {
  forbidden: boolean;
  /** Short human sentence naming the range, present when forbidden. Never echoes the input. */
  reason?: string;
  /** Machine-readable class of the refused range (for an embedded IPv4, the class of that address). */
  category?: ForbiddenCategory;
}

export interface AddressRule {
  /** Network address in canonical text form. */
  readonly network: string;
  readonly prefix: number;
  readonly category: ForbiddenCategory;
  readonly reason: string;
}

interface CompiledRule extends AddressRule {
  readonly bytes: Uint8Array;
}

/** IPv4 deny list; the most specific entries come first so their reason wins. */
export const IPV4_RULES: readonly AddressRule[] = [
  { network: '0.0.0.0', prefix: 32, category: 'unspecified', reason: 'unspecified address' },
  { network: '255.255.255.255', prefix: 32, category: 'broadcast', reason: 'limited broadcast address' },
  { network: '169.254.169.254', prefix: 32, category: 'metadata', reason: 'cloud metadata address' },
  { network: '169.254.170.2', prefix: 32, category: 'metadata', reason: 'container metadata address' },
  { network: '100.100.100.200', prefix: 32, category: 'metadata', reason: 'cloud metadata address' },
  { network: '0.0.0.0', prefix: 8, category: 'reserved', reason: 'reserved "this network" range 0.0.0.0/8' },
  { network: '10.0.0.0', prefix: 8, category: 'private', reason: 'private range 10.0.0.0/8' },
  { network: '100.64.0.0', prefix: 10, category: 'shared', reason: 'carrier-grade NAT range 100.64.0.0/10' },
  { network: '127.0.0.0', prefix: 8, category: 'loopback', reason: 'loopback range 127.0.0.0/8' },
  { network: '169.254.0.0', prefix: 16, category: 'link-local', reason: 'link-local range 169.254.0.0/16' },
  { network: '172.16.0.0', prefix: 12, category: 'private', reason: 'private range 172.16.0.0/12' },
  { network: '192.0.0.0', prefix: 24, category: 'reserved', reason: 'IETF protocol assignments range 192.0.0.0/24' },
  { network: '192.0.2.0', prefix: 24, category: 'documentation', reason: 'documentation range 192.0.2.0/24' },
  { network: '192.88.99.0', prefix: 24, category: 'reserved', reason: 'deprecated 6to4 relay range 192.88.99.0/24' },
  { network: '192.168.0.0', prefix: 16, category: 'private', reason: 'private range 192.168.0.0/16' },
  { network: '198.18.0.0', prefix: 15, category: 'reserved', reason: 'benchmarking range 198.18.0.0/15' },
  { network: '198.51.100.0', prefix: 24, category: 'documentation', reason: 'documentation range 198.51.100.0/24' },
  { network: '203.0.113.0', prefix: 24, category: 'documentation', reason: 'documentation range 203.0.113.0/24' },
  { network: '224.0.0.0', prefix: 4, category: 'multicast', reason: 'multicast range 224.0.0.0/4' },
  { network: '240.0.0.0', prefix: 4, category: 'reserved', reason: 'reserved range 240.0.0.0/4' },
];

/**
 * IPv6 deny list, checked after the special prefixes that embed IPv4 (see classifyIpv6). Anything
 * that matches no rule but lies outside 2000::/3 is refused as well.
 */
export const IPV6_RULES: readonly AddressRule[] = [
  { network: '::', prefix: 128, category: 'unspecified', reason: 'unspecified address' },
  { network: '::1', prefix: 128, category: 'loopback', reason: 'loopback address ::1' },
  { network: 'fd00:ec2::254', prefix: 128, category: 'metadata', reason: 'cloud metadata address' },
  { network: '::', prefix: 96, category: 'ipv4-compatible', reason: 'deprecated IPv4-compatible range ::/96' },
  { network: '64:ff9b:1::', prefix: 48, category: 'nat64-local', reason: 'local-use NAT64 range 64:ff9b:1::/48' },
  { network: '100::', prefix: 64, category: 'discard', reason: 'discard-only range 100::/64' },
  { network: 'fc00::', prefix: 7, category: 'unique-local', reason: 'unique-local range fc00::/7' },
  { network: 'fe80::', prefix: 10, category: 'link-local', reason: 'link-local range fe80::/10' },
  { network: 'fec0::', prefix: 10, category: 'site-local', reason: 'deprecated site-local range fec0::/10' },
  { network: 'ff00::', prefix: 8, category: 'multicast', reason: 'multicast range ff00::/8' },
  { network: '2001:db8::', prefix: 32, category: 'documentation', reason: 'documentation range 2001:db8::/32' },
  { network: '3fff::', prefix: 20, category: 'documentation', reason: 'documentation range 3fff::/20' },
  { network: '2001:2::', prefix: 48, category: 'reserved', reason: 'benchmarking range 2001:2::/48' },
  { network: '2001:10::', prefix: 28, category: 'reserved', reason: 'deprecated ORCHID range 2001:10::/28' },
  { network: '2001:20::', prefix: 28, category: 'reserved', reason: 'ORCHIDv2 range 2001:20::/28' },
];

function compile(rules: readonly AddressRule[], parse: (s: string) => Uint8Array | null): CompiledRule[] {
  return rules.map((r) => {
    const bytes = parse(r.network);
    if (!bytes) throw new Error(`address-policy: bad rule network ${r.network}`);
    return { ...r, bytes };
  });
}

/** True when the first `prefix` bits of `addr` equal those of `net`. */
function inPrefix(addr: Uint8Array, net: Uint8Array, prefix: number): boolean {
  const full = prefix >> 3;
  for (let i = 0; i < full; i++) if (addr[i] !== net[i]) return false;
  const rest = prefix & 7;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return ((addr[full]! ^ net[full]!) & mask) === 0;
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

const STRICT_IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

/** Canonical dotted quad (no leading zeros) to 4 bytes, else null. */
export function parseIpv4Strict(s: string): Uint8Array | null {
  if (!STRICT_IPV4.test(s)) return null;
  return Uint8Array.from(s.split('.').map(Number));
}

/** One inet_aton / WHATWG IPv4 part: decimal, `0x` hex, or leading-zero octal. */
function parseLoosePart(part: string, octalAsDecimal: boolean): number | null {
  if (part === '') return null;
  let digits = part;
  let radix = 10;
  if (/^0x/i.test(part)) {
    digits = part.slice(2);
    radix = 16;
    if (digits === '') return 0; // WHATWG reads a bare "0x" as zero
    if (!/^[0-9a-f]+$/i.test(digits)) return null;
  } else if (part.length > 1 && part.startsWith('0') && !octalAsDecimal) {
    digits = part.slice(1);
    radix = 8;
    if (!/^[0-7]+$/.test(digits)) return null;
  } else if (!/^\d+$/.test(digits)) {
    return null;
  }
  // Reject absurdly long numbers early; they cannot be a valid address anyway.
  if (digits.replace(/^0+/, '').length > 12) return null;
  const n = parseInt(digits, radix);
  return Number.isSafeInteger(n) ? n : null;
}

function parseIpv4Loose(s: string, octalAsDecimal: boolean): Uint8Array | null {
  const text = s.endsWith('.') ? s.slice(0, -1) : s;
  const parts = text.split('.');
  if (parts.length < 1 || parts.length > 4) return null;
  const nums: number[] = [];
  for (const p of parts) {
    const n = parseLoosePart(p, octalAsDecimal);
    if (n === null) return null;
    nums.push(n);
  }
  const last = nums.pop()!;
  for (const n of nums) if (n > 255) return null;
  if (last >= 256 ** (4 - nums.length)) return null;
  let value = last;
  nums.forEach((n, i) => {
    value += n * 256 ** (3 - i);
  });
  return Uint8Array.from([(value >>> 24) & 0xff, (value >>> 16) & 0xff, (value >>> 8) & 0xff, value & 0xff]);
}

/**
 * Every 4-byte reading of an IPv4 spelling. inet_aton and WHATWG read a leading zero as octal;
 * a human (or another parser) may read it as decimal. Both readings are returned so the policy
 * can refuse when either lands in a forbidden range.
 */
export function parseIpv4Readings(s: string): Uint8Array[] {
  const strict = parseIpv4Strict(s);
  if (strict) return [strict];
  const out: Uint8Array[] = [];
  const a = parseIpv4Loose(s, false);
  if (a) out.push(a);
  const b = parseIpv4Loose(s, true);
  if (b && !(a && equalBytes(a, b))) out.push(b);
  return out;
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/**
 * IPv6 text (optionally in brackets, optionally with a `%zone` or URL-encoded `%25zone`) to 16
 * bytes, else null. Accepts `::` compression and a trailing embedded dotted quad.
 */
export function parseIpv6(input: string): Uint8Array | null {
  let s = input;
  if (s.startsWith('[') && s.endsWith(']')) s = s.slice(1, -1);
  const pct = s.indexOf('%');
  if (pct >= 0) {
    const zone = s.slice(pct + 1).replace(/^25/, '');
    if (zone === '' || !/^[A-Za-z0-9_.~-]+$/.test(zone)) return null;
    s = s.slice(0, pct);
  }
  if (s.length === 0 || s.length > 45 || !/^[0-9A-Fa-f:.]+$/.test(s)) return null;

  const halves = s.split('::');
  if (halves.length > 2) return null;
  const toGroups = (part: string, isTail: boolean): number[] | null => {
    if (part === '') return [];
    const items = part.split(':');
    const groups: number[] = [];
    for (let i = 0; i < items.length; i++) {
      const item = items[i]!;
      if (item.includes('.')) {
        if (!isTail || i !== items.length - 1) return null;
        const v4 = parseIpv4Strict(item);
        if (!v4) return null;
        groups.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
      } else {
        if (!/^[0-9A-Fa-f]{1,4}$/.test(item)) return null;
        groups.push(parseInt(item, 16));
      }
    }
    return groups;
  };

  let groups: number[];
  if (halves.length === 1) {
    const g = toGroups(halves[0]!, true);
    if (!g || g.length !== 8) return null;
    groups = g;
  } else {
    const head = toGroups(halves[0]!, false);
    const tail = toGroups(halves[1]!, true);
    if (!head || !tail || head.length + tail.length > 7) return null;
    groups = [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
  }
  const bytes = new Uint8Array(16);
  groups.forEach((g, i) => {
    bytes[2 * i] = g >> 8;
    bytes[2 * i + 1] = g & 0xff;
  });
  return bytes;
}

const V4 = compile(IPV4_RULES, parseIpv4Strict);
const V6 = compile(IPV6_RULES, parseIpv6);
const NAT64_WKP = parseIpv6('64:ff9b::')!;
const MAPPED = parseIpv6('::ffff:0:0')!;
const SIX_TO_FOUR = parseIpv6('2002::')!;
const TEREDO = parseIpv6('2001::')!;
const GLOBAL_UNICAST = parseIpv6('2000::')!;

// ---------------------------------------------------------------------------------------------
// Classification
// ---------------------------------------------------------------------------------------------

const ALLOWED: AddressVerdict = { forbidden: false };

function classifyIpv4(bytes: Uint8Array): AddressVerdict {
  for (const r of V4) {
    if (inPrefix(bytes, r.bytes, r.prefix)) return { forbidden: true, reason: r.reason, category: r.category };
  }
  return ALLOWED;
}

function embedded(label: string, bytes: Uint8Array): AddressVerdict {
  const inner = classifyIpv4(bytes);
  if (!inner.forbidden) return ALLOWED;
  const out: AddressVerdict = { forbidden: true, reason: `${label} embedding a forbidden IPv4 address (${inner.reason})` };
  if (inner.category) out.category = inner.category;
  return out;
}

function classifyIpv6(b: Uint8Array): AddressVerdict {
  // IPv4-mapped ::ffff:0:0/96: the connection goes to the embedded IPv4 address, judge that.
  if (inPrefix(b, MAPPED, 96)) return embedded('IPv4-mapped address', b.subarray(12));
  // Well-known NAT64 64:ff9b::/96 (DNS64 synthesizes these for IPv4-only names).
  if (inPrefix(b, NAT64_WKP, 96)) return embedded('NAT64 address', b.subarray(12));

  for (const r of V6) {
    if (inPrefix(b, r.bytes, r.prefix)) return { forbidden: true, reason: r.reason, category: r.category };
  }
  if (!inPrefix(b, GLOBAL_UNICAST, 3)) {
    return { forbidden: true, reason: 'reserved range outside global unicast 2000::/3', category: 'reserved' };
  }
  // 6to4 2002:V4ADDR::/48.
  if (inPrefix(b, SIX_TO_FOUR, 16)) return embedded('6to4 address', b.subarray(2, 6));
  // Teredo 2001:0:SERVER::/32 with the client address bit-inverted in the last 32 bits.
  if (inPrefix(b, TEREDO, 32)) {
    const server = embedded('Teredo address (server)', b.subarray(4, 8));
    if (server.forbidden) return server;
    return embedded('Teredo address (client)', b.subarray(12, 16).map((x) => x ^ 0xff));
  }
  return ALLOWED;
}

/**
 * Decides whether an outbound connection to `ip` must be refused. Accepts IPv4 (any inet_aton
 * spelling) and IPv6 (optional brackets and zone id). Anything else is refused as invalid.
 */
export function isForbiddenAddress(ip: string): AddressVerdict {
  const text = typeof ip === 'string' ? ip.trim() : '';
  if (text === '' || text.length > 100) return { forbidden: true, reason: 'not an IP address', category: 'invalid' };

  if (text.includes(':')) {
    const v6 = parseIpv6(text);
    return v6 ? classifyIpv6(v6) : { forbidden: true, reason: 'not an IP address', category: 'invalid' };
  }
  const readings = parseIpv4Readings(text);
  if (readings.length === 0) return { forbidden: true, reason: 'not an IP address', category: 'invalid' };
  for (const r of readings) {
    const v = classifyIpv4(r);
    if (v.forbidden) return v;
  }
  return ALLOWED;
}

/** True for 127.0.0.0/8, ::1 and IPv4-mapped 127/8 (whatever the spelling). */
export function isLoopbackAddress(ip: string): boolean {
  const v = isForbiddenAddress(ip);
  return v.forbidden && v.category === 'loopback';
}

/**
 * Canonical text for an address: dotted quad for IPv4 (after inet_aton reading), RFC 5952-ish
 * lower-case compressed text for IPv6 without zone. Null when the input is not an address or
 * its IPv4 spelling is ambiguous (octal vs decimal).
 */
export function canonicalAddress(ip: string): { address: string; family: 4 | 6 } | null {
  if (ip.includes(':')) {
    const b = parseIpv6(ip);
    if (!b) return null;
    const groups: number[] = [];
    for (let i = 0; i < 16; i += 2) groups.push((b[i]! << 8) | b[i + 1]!);
    // Longest run of zero groups (length >= 2) becomes "::".
    let bestStart = -1;
    let bestLen = 0;
    for (let i = 0; i < 8; ) {
      if (groups[i] !== 0) {
        i++;
        continue;
      }
      let j = i;
      while (j < 8 && groups[j] === 0) j++;
      if (j - i > bestLen && j - i >= 2) {
        bestStart = i;
        bestLen = j - i;
      }
      i = j;
    }
    const hex = groups.map((g) => g.toString(16));
    if (bestStart < 0) return { address: hex.join(':'), family: 6 };
    const head = hex.slice(0, bestStart).join(':');
    const tail = hex.slice(bestStart + bestLen).join(':');
    return { address: `${head}::${tail}`, family: 6 };
  }
  const readings = parseIpv4Readings(ip);
  if (readings.length !== 1) return null;
  return { address: Array.from(readings[0]!).join('.'), family: 4 };
}
