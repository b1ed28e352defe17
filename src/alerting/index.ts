/**
 * Alerting (specs/alerting.md): definitions API, the `alert_events` buffered dataset, routing's
 * database half and the evaluation context. See README.md in this folder.
 */
export { alertingPlugin, alertRoutes, type AlertingPluginOptions } from './plugin.js';
export { alertEventsDataset, alertEventId, ALERT_EVENTS, type AlertEventRow } from './alert-events.js';
export { createAlertRouteStore } from './route-store.js';
export { alertEvaluateContext, configuredDefinitionIds } from './context.js';
export { SEVERITIES, definitionBodySchema, normalizeDefinition, type Severity, type StoredChannel } from './schemas.js';
export { listDeliveries, getDefinition, canView, canModify, type Viewer } from './definitions.js';
