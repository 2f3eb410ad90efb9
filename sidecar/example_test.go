package sidecar_test

import (
	"context"
	"fmt"
	"log"
	"net/http/httptest"
	"time"

	"github.com/lastcall-dev/lastcall/sidecar"
	"github.com/lastcall-dev/lastcall/sidecar/pod"
)

// A worker pulls while its sidecar says run, and stops pulling the moment
// the node starts draining; then it finishes or hands back what it holds,
// by the deadline, and says it is done.
func ExampleClient_Draining() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addr, notice := exampleNode(ctx) // a node agent and this pod's sidecar

	c, err := sidecar.NewClient(addr) // in a pod: sidecar.DefaultAddr
	if err != nil {
		log.Fatal(err)
	}
	drain := c.Draining(ctx)
	go notice() // the node's termination notice arrives

	pulled := 0
	for drain.Err() == nil {
		// msg, err := sub.Receive(drain): pull with drain, so that a
		// waiting pull ends too.
		select {
		case <-drain.Done():
		case <-time.After(10 * time.Millisecond):
			pulled++
		}
	}
	if st, ok := sidecar.DrainingState(drain); ok {
		fmt.Println("draining:", st.Reason, "time left:", st.Remaining(time.Now()).Round(time.Minute))
		// Finish what fits before st.Deadline; hand back (nack) the rest.
	}
	if err := c.Done(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("done reported")
	// Output:
	// draining: preemption time left: 2m0s
	// done reported
}

// exampleNode starts a Hub and one pod's sidecar on loopback, and returns
// the sidecar's address and a function that drains the node.
func exampleNode(ctx context.Context) (addr string, notice func()) {
	ips := newPodIPs()
	ips.set(sidecar.PodRef{Namespace: "jobs", Name: "worker-0"}, "127.0.0.1")
	hub, err := sidecar.NewHub(sidecar.HubOptions{Pods: ips})
	if err != nil {
		log.Fatal(err)
	}
	srv := httptest.NewServer(hub.Handler())
	context.AfterFunc(ctx, func() { hub.Close(); srv.Close() })
	s, err := pod.New(pod.Config{Namespace: "jobs", Name: "worker-0", Agent: srv.URL, Listen: "127.0.0.1:0"})
	if err != nil {
		log.Fatal(err)
	}
	go func() { _ = s.Run(ctx) }()
	return s.Addr().String(), func() {
		_, _ = hub.Draining(ctx, testNotice(time.Now().Add(2*time.Minute)))
	}
}
