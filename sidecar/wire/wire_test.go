package wire

import (
	"testing"
	"time"
)

func TestParsePollQuery(t *testing.T) {
	tests := []struct {
		gen, wait string
		want      PollQuery
		wantErr   bool
	}{
		{"", "", PollQuery{}, false},
		{"42", "30s", PollQuery{Generation: 42, Wait: 30 * time.Second}, false},
		{"1", "2.5", PollQuery{Generation: 1, Wait: 2500 * time.Millisecond}, false},
		{"1", "1h", PollQuery{Generation: 1, Wait: MaxWait}, false},
		{"x", "", PollQuery{}, true},
		{"1", "-1s", PollQuery{}, true},
		{"1", "soon", PollQuery{}, true},
	}
	for _, tt := range tests {
		q := map[string]string{"generation": tt.gen, "wait": tt.wait}
		got, err := ParsePollQuery(func(k string) string { return q[k] })
		if (err != nil) != tt.wantErr || (!tt.wantErr && got != tt.want) {
			t.Errorf("generation=%q wait=%q: %+v, %v; want %+v, error %v", tt.gen, tt.wait, got, err, tt.want, tt.wantErr)
		}
	}
	round := PollQuery{Generation: 7, Wait: 30 * time.Second}.Encode()
	if round != "generation=7&wait=30s" {
		t.Errorf("Encode = %q", round)
	}
}

func TestNextGeneration(t *testing.T) {
	now := time.UnixMicro(1_000_000)
	if g := NextGeneration(0, now); g != 1_000_000 {
		t.Errorf("first: %d", g)
	}
	if g := NextGeneration(5_000_000, now); g != 5_000_001 {
		t.Errorf("ahead of the clock: %d", g)
	}
}
