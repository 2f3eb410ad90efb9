// Package jstest starts an embedded NATS server with JetStream for tests
// of workers: a work queue stream JOBS on subjects jobs.> and a durable pull
// consumer "workers". It is a package of its own so that tests that need no
// NATS server do not build one in.
package jstest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Server is a running JetStream server with the work queue.
type Server struct {
	URL      string // for nats.Connect
	Conn     *nats.Conn
	JS       jetstream.JetStream
	Consumer jetstream.Consumer // durable "workers" on stream JOBS
}

// Start starts the server on loopback, stopped when the test ends, and
// creates the stream and the consumer with cfg (Durable and AckPolicy
// explicit are set here).
func Start(ctx context.Context, t testing.TB, cfg jetstream.ConsumerConfig) *Server {
	t.Helper()
	ns, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	s := &Server{URL: ns.ClientURL()}
	if s.Conn, err = nats.Connect(s.URL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Conn.Close)
	if s.JS, err = jetstream.New(s.Conn); err != nil {
		t.Fatal(err)
	}
	stream, err := s.JS.CreateStream(ctx, jetstream.StreamConfig{
		Name: "JOBS", Subjects: []string{"jobs.>"}, Retention: jetstream.WorkQueuePolicy,
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Durable, cfg.AckPolicy = "workers", jetstream.AckExplicitPolicy
	if s.Consumer, err = stream.CreateOrUpdateConsumer(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	return s
}
