package kubetest

import (
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"

	"k8s.io/client-go/rest"
)

// Proxy forwards TCP connections to the apiserver and can be taken down
// and brought back, so that a test sees what a client sees when the
// apiserver stops and restarts: refused connections, then service again.
type Proxy struct {
	target string
	addr   string

	mu    sync.Mutex // guards ln and conns
	ln    net.Listener
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

// NewProxy starts a proxy on a free loopback port in front of the
// apiserver of cfg and returns it with a copy of cfg that goes through it.
func (e *Env) NewProxy() (*Proxy, *rest.Config, error) {
	u, err := hostPort(e.Config.Host)
	if err != nil {
		return nil, nil, err
	}
	p := &Proxy{target: u, conns: map[net.Conn]bool{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	p.addr = ln.Addr().String()
	p.serve(ln)
	cfg := rest.CopyConfig(e.Config)
	cfg.Host = "https://" + p.addr
	return p, cfg, nil
}

func hostPort(host string) (string, error) {
	if !strings.Contains(host, "://") {
		host = "https://" + host
	}
	u, err := url.Parse(host)
	if err != nil {
		return "", fmt.Errorf("parse apiserver address %q: %w", host, err)
	}
	return u.Host, nil
}

func (p *Proxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			p.conns[c] = true
			p.mu.Unlock()
			p.wg.Go(func() { p.pipe(c) })
		}
	})
}

func (p *Proxy) pipe(c net.Conn) {
	defer func() {
		c.Close()
		p.mu.Lock()
		delete(p.conns, c)
		p.mu.Unlock()
	}()
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
}

// Down closes the listener and every open connection: new connections are
// refused until Up.
func (p *Proxy) Down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
}

// Up listens again on the same address.
func (p *Proxy) Up() error {
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		return fmt.Errorf("proxy up on %s: %w", p.addr, err)
	}
	p.serve(ln)
	return nil
}

// Close stops the proxy and waits for its goroutines.
func (p *Proxy) Close() {
	p.Down()
	p.wg.Wait()
}
