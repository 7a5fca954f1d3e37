export { RealtimeClient } from './client.js';
export type {
  CloseInfo,
  ConnectedMessage,
  ConnectionState,
  ErrorMessage,
  PresenceResult,
  PublishOptions,
  PublishResult,
  RealtimeError,
  RealtimeEvents,
  RealtimeMessage,
  RealtimeOptions,
  ReloadEvent,
  StateEvent,
  TaskUpdateMessage,
  TokenSource,
  TransportName,
} from './types.js';
