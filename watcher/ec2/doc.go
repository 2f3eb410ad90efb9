// Package ec2 watches the Amazon EC2 instance metadata service (IMDSv2) for
// spot interruption notices, rebalance recommendations, scheduled events and
// Auto Scaling target lifecycle state, and turns them into watcher.Notices.
//
// IMDS has no long poll, so the paths are polled: the spot interruption
// notice every 250 ms by default, the others in turn, one every second, 5
// requests a second in all.
// Requests go through the AWS SDK's imds client, which fetches a session token
// with PUT /latest/api/token, reuses it until its TTL runs out, fetches a new
// one then, and on a 401 drops the token, fetches a new one and retries the
// request once. This package relies on that and tests it. The SDK's silent
// fall back to IMDSv1 when no token can be had is turned off unless
// Options.AllowIMDSv1 is set. Only the four event paths are read; never a
// credentials path.
package ec2
