package httpguard

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/http"
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

func TestCapPerAddress(t *testing.T) {
	addr, refused := serve(t, http.HandlerFunc(ok), Limits{MaxConnsPerAddr: 3, MaxConns: 100})
	var held []net.Conn
	for range 3 {
		held = append(held, dialFrom(t, "127.0.0.2", addr))
	}
	time.Sleep(100 * time.Millisecond) // the server accepts them
	over := dialFrom(t, "127.0.0.2", addr)
	if !closedSoon(over, 2*time.Second) {
		t.Fatal("a fourth connection from one address was kept")
	}
	if refused("per_address") != 1 {
		t.Errorf("refused per address %d, want 1", refused("per_address"))
	}
	// Another address is still served.
	other := dialFrom(t, "127.0.0.3", addr)
	if _, err := io.WriteString(other, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	_ = other.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, _ := other.Read(buf); !bytes.Contains(buf[:n], []byte("200 OK")) {
		t.Fatalf("other address got %q", buf[:n])
	}
	// A slot freed is a slot again.
	held[0].Close()
	time.Sleep(100 * time.Millisecond)
	again := dialFrom(t, "127.0.0.2", addr)
	if closedSoon(again, 300*time.Millisecond) {
		t.Error("a freed slot was not reused")
	}
}

func TestCapTotal(t *testing.T) {
	addr, refused := serve(t, http.HandlerFunc(ok), Limits{MaxConnsPerAddr: 100, MaxConns: 4})
	for i := range 4 {
		dialFrom(t, "127.0.0."+string(rune('2'+i)), addr)
	}
	time.Sleep(100 * time.Millisecond)
	if !closedSoon(dialFrom(t, "127.0.0.9", addr), 2*time.Second) || refused("total") != 1 {
		t.Fatalf("a connection over the total cap was kept (refused %d)", refused("total"))
	}
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
