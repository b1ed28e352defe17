/** The OS sandbox of local UDF runs; see README.md in this folder. */
export {
  DEFAULT_CHANNEL_LIMITS,
  DEFAULT_LIMITS,
  DEFAULT_SANDBOX_UID,
  SANDBOX_MODES,
  SandboxConfigError,
  defaultSandboxConfig,
  sandboxConfigFromEnv,
  type ChannelLimits,
  type SandboxConfig,
  type SandboxLimits,
  type SandboxMode,
} from './config.js';
export { CHANNEL_ROUTES, openTaskChannel, type TaskChannel, type TaskChannelOptions, type TaskFence } from './channel.js';
export { SANDBOX_PATHS, UdfSandbox, type RuntimeKind, type SandboxReport, type SandboxState } from './sandbox.js';
