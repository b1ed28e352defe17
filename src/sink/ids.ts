/**
 * Identities of buffered datasets (pure; shared by the Dispatcher's registration, the sink and
 * operators that read a buffered dataset). One registry row per `(org, name)`, one version.
 */
import { uuidV5 } from '../core/ids.js';

export const bufferedDatasetUuid = (orgId: string, name: string): string => uuidV5('dataset', orgId, 'buffered', name);
export const bufferedDatasetVersion = (datasetUuid: string): string => uuidV5('dataset_version', datasetUuid, 'buffered:v1');
