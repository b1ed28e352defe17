// The RPC egress gateway of the chain benchmark in its own process, as deployed. Arg: the
// node URL (pool `dev`). Prints {url} once listening; runs until SIGTERM.
import { startRpcGateway } from '../src/rpc-gateway/gateway.js';

const gw = await startRpcGateway({ pools: { dev: [process.argv[2]!] }, port: 0, host: '127.0.0.1' });
process.stdout.write(`${JSON.stringify({ url: gw.url })}\n`);
process.on('SIGTERM', () => { void gw.close().then(() => process.exit(0)); });
