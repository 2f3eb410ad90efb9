// Package gce watches the Google Compute Engine metadata server for
// preemption and host maintenance, and turns what it sees into
// watcher.Notices.
//
// It reads two values, instance/preempted and instance/maintenance-event,
// each through its own loop of hanging GETs (wait_for_change=true with
// last_etag), so a change is seen as soon as the server publishes it and no
// change can slip between two requests. It uses the
// cloud.google.com/go/compute/metadata client for the requests, but not its
// Subscribe helper: Subscribe sleeps a fixed, uncancellable 5 s after any
// error it does not retry itself, stops for good when a value answers 404, and
// hands the same value again after every server-side timeout. This package
// runs its own loop instead, with a short jittered backoff it controls, and
// de-duplicates repeated values.
//
// The metadata host is an option (Options.Host), applied by the HTTP
// transport, so tests point the watcher at a local fake without setting
// GCE_METADATA_HOST.
package gce
