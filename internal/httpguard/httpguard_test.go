package httpguard

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// serve runs a guarded server on loopback until the test ends and returns
// its address and a count of refusals by reason.
func serve(t *testing.T, h http.Handler, l Limits) (string, func(string) int) {
	t.Helper()
	var mu sync.Mutex
	refused := map[string]int{}
	ln, err := Listen("tcp", "127.0.0.1:0", l, func(r string) {
		mu.Lock()
		refused[r]++
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := Server(h, l, nil)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String(), func(r string) int {
		mu.Lock()
		defer mu.Unlock()
		return refused[r]
	}
}

func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedSoon reports whether the server closes c within d.
// (An error response before the close, such as a 408, counts as closed.)
func closedSoon(c net.Conn, d time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	return err == nil || !isTimeout(err)
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func ok(w http.ResponseWriter, r *http.Request) {
	if _, err := io.Copy(io.Discard, r.Body); err != nil {
		http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
		return
	}
	_, _ = io.WriteString(w, "ok")
}

// get sends GET path on c and reports whether a 200 came back within d.
func get(c net.Conn, path string, d time.Duration) bool {
	_ = c.SetDeadline(time.Now().Add(d))
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		return false
	}
	buf := make([]byte, 64)
	n, _ := io.ReadAtLeast(c, buf, 12)
	return bytes.Contains(buf[:n], []byte(" 200 "))
}

// At the per-address cap the newcomer gets in and the oldest quiet
// connection of its address is closed instead; other addresses are not
// touched.
func TestCapPerAddress(t *testing.T) {
	addr, shed := serve(t, http.HandlerFunc(ok), Limits{MaxConnsPerAddr: 3, MaxConns: 100})
	other := dialFrom(t, "127.0.0.3", addr)
	var held []net.Conn
	for range 3 {
		held = append(held, dialFrom(t, "127.0.0.2", addr))
		time.Sleep(20 * time.Millisecond) // accepted in this order
	}
	newcomer := dialFrom(t, "127.0.0.2", addr)
	if !get(newcomer, "/", 2*time.Second) {
		t.Fatal("a fourth connection from one address was not served")
	}
	if !closedSoon(held[0], 2*time.Second) {
		t.Error("the oldest connection of the address was kept")
	}
	for i, c := range held[1:] {
		if closedSoon(c, 100*time.Millisecond) {
			t.Errorf("connection %d of the address closed, want only the oldest", i+1)
		}
	}
	if shed("per_address") != 1 {
		t.Errorf("shed per address %d, want 1", shed("per_address"))
	}
	if !get(other, "/", 2*time.Second) {
		t.Error("another address's connection was not served")
	}
}

// At the total cap the newcomer gets in and a connection of the source
// holding the most is closed, not one of a source that holds one.
func TestCapTotal(t *testing.T) {
	addr, shed := serve(t, http.HandlerFunc(ok), Limits{MaxConnsPerAddr: 100, MaxConns: 4})
	lone := dialFrom(t, "127.0.0.2", addr)
	time.Sleep(20 * time.Millisecond) // the oldest of all
	var heavy []net.Conn
	for range 3 {
		heavy = append(heavy, dialFrom(t, "127.0.0.3", addr))
	}
	time.Sleep(100 * time.Millisecond)
	if !get(dialFrom(t, "127.0.0.9", addr), "/", 2*time.Second) {
		t.Fatal("a connection over the total cap was not served")
	}
	closed := 0
	for _, c := range heavy {
		if closedSoon(c, 300*time.Millisecond) {
			closed++
		}
	}
	if closed != 1 || shed("total") != 1 {
		t.Errorf("%d of the heaviest source's connections closed (shed %d), want 1", closed, shed("total"))
	}
	if !get(lone, "/", 2*time.Second) {
		t.Error("the lone source's connection, older than all, was shed")
	}
}

// A request being answered (a long-poll) outlives quiet connections, even
// older ones and ones of a heavier source.
func TestCapShedsQuietFirst(t *testing.T) {
	release := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/poll" {
			<-release
		}
		ok(w, r)
	})
	addr, _ := serve(t, h, Limits{MaxConnsPerAddr: 2, MaxConns: 100})
	poll := dialFrom(t, "127.0.0.2", addr)
	if _, err := io.WriteString(poll, "GET /poll HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the poll is in the handler
	for range 5 {
		dialFrom(t, "127.0.0.2", addr) // each sheds the quiet one before it
		time.Sleep(20 * time.Millisecond)
	}
	close(release)
	buf := make([]byte, 64)
	_ = poll.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, _ := io.ReadAtLeast(poll, buf, 12); !bytes.Contains(buf[:n], []byte(" 200 ")) {
		t.Fatalf("the long-poll got %q, want it answered", buf[:n])
	}
}

// The agent's metrics port's limits (64 in all, 8 per address) under a
// flood from 128 loopback addresses, 4 silent or dripping connections each
// (the caps' four times over), each redialled a second after the server
// closes it: every probe from the kubelet's address (the node's, here
// 127.0.0.1) is answered.
func TestProbesThroughFlood(t *testing.T) {
	l := Limits{MaxConns: 64, MaxConnsPerAddr: 8, ReadHeaderTimeout: 5 * time.Second, Reserved: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}
	addr, shed := serve(t, http.HandlerFunc(ok), l)
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for i := range 512 {
		src := &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(1+i%128))}
		drip := i%2 == 0
		wg.Go(func() {
			d := net.Dialer{LocalAddr: src}
			for ctx.Err() == nil {
				c, err := d.DialContext(ctx, "tcp", addr)
				if err != nil {
					time.Sleep(50 * time.Millisecond)
					continue
				}
				stop := context.AfterFunc(ctx, func() { c.Close() })
				for ctx.Err() == nil {
					if drip {
						_, _ = c.Write([]byte("G"))
					}
					_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
					if _, err := c.Read(make([]byte, 64)); err != nil && !isTimeout(err) {
						break
					}
				}
				stop()
				c.Close()
				select { // it holds connections; it need not starve the machine
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
		})
	}
	time.Sleep(time.Second) // the flood fills the caps
	answered, probes := 0, 0
	for range 40 {
		probes++
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			if get(c, "/healthz", 2*time.Second) {
				answered++
			}
			c.Close()
		}
		time.Sleep(50 * time.Millisecond)
	}
	if answered != probes {
		t.Errorf("%d of %d probes answered during the flood, want all", answered, probes)
	}
	if shed("total")+shed("per_address") == 0 {
		t.Error("nothing shed: the flood did not reach the caps")
	}
	t.Logf("%d of %d probes answered; shed %d (total), %d (per address)", answered, probes, shed("total"), shed("per_address"))
}

// A client that connects and says nothing, or drips its headers, or keeps
// a connection idle after a request, is dropped after the timeouts.
func TestTimeouts(t *testing.T) {
	l := Limits{ReadHeaderTimeout: 200 * time.Millisecond, IdleTimeout: 300 * time.Millisecond}
	addr, _ := serve(t, http.HandlerFunc(ok), l)

	silent := dialFrom(t, "127.0.0.2", addr)
	if !closedSoon(silent, 2*time.Second) {
		t.Error("a silent connection was kept past the header timeout")
	}
	drip := dialFrom(t, "127.0.0.2", addr)
	go func() {
		for range 20 {
			if _, err := drip.Write([]byte("G")); err != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	if !closedSoon(drip, 2*time.Second) {
		t.Error("a connection dripping its headers was kept")
	}
	idle := dialFrom(t, "127.0.0.2", addr)
	if _, err := io.WriteString(idle, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 256)
	_ = idle.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := idle.Read(buf); err != nil {
		t.Fatal(err)
	}
	if !closedSoon(idle, 2*time.Second) {
		t.Error("an idle keep-alive connection was kept past the idle timeout")
	}
}

func TestBodyLimit(t *testing.T) {
	addr, _ := serve(t, http.HandlerFunc(ok), Limits{MaxBodyBytes: 1024})
	resp, err := http.Post("http://"+addr, "text/plain", strings.NewReader(strings.Repeat("x", 4096)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("4 KiB body with a 1 KiB limit: %d", resp.StatusCode)
	}
}

func TestQuietLogger(t *testing.T) {
	var buf bytes.Buffer
	log := NewQuietLogger(slog.New(slog.NewTextHandler(&buf, nil)))
	for range 1000 {
		log.Warn("refused", "from", "x")
	}
	if n := strings.Count(buf.String(), "refused"); n < 1 || n > 3 {
		t.Errorf("%d lines for 1000 refusals in a burst, want 1-3", n)
	}
}
