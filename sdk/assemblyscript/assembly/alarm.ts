// alarm.ts: an actor's alarm (docs/abi.md "Actors"), imported by a service as `mm.alarm`: at most one per actor,
// a wall-clock time in milliseconds since the Unix epoch, usually mm.nowMs() plus a delay (a time in the past fires
// at once). When it is due the actor's onAlarm handler runs. Setting and clearing are part of the request's
// transaction. Outside an actor each function fails with ERR_NOT_ACTOR.

import * as host from "./host";
import { failLocally, settleStatus } from "./bytes";

const ERR_NOT_FOUND = -11;

/** Sets (replaces) the alarm: 0 or a negative code. */
export function set(atMs: i64): i32 {
  return settleStatus(host.alarm_set(atMs));
}

/** The alarm's time, or -1: lastCode() is then ERR_NOT_FOUND when none is set, or the error. */
export function get(): i64 {
  const at = host.alarm_get();
  if (at >= 0) {
    settleStatus(0);
    return at;
  }
  if (at == -1) failLocally(ERR_NOT_FOUND, "alarm.get: no alarm is set");
  else settleStatus(<i32>at);
  return -1;
}

function del(): i32 {
  return settleStatus(host.alarm_delete());
}
/** Clears the alarm: 0 or a negative code. */
export { del as delete };
