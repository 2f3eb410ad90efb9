package wire

import (
	"encoding/json"
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

func TestStateJSON(t *testing.T) {
	deadline := time.Date(2026, 12, 2, 1, 13, 29, 123_987_654, time.FixedZone("CET", 3600))
	tests := []struct {
		name string
		in   State
		want string
	}{
		{"running", State{Phase: PhaseRunning, Generation: 3, AgentConnected: true},
			`{"phase":"running","generation":3,"agent_generation":0,"agent_connected":true,"done":false,"inflight":0}`},
		{"draining", State{Phase: PhaseDraining, Reason: "preemption", Source: "gce", Deadline: deadline, Generation: 4},
			`{"phase":"draining","reason":"preemption","source":"gce","generation":4,"agent_generation":0,"agent_connected":false,"done":false,"inflight":0,"deadline":"2026-12-02T00:13:29.123+00:00"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := json.Marshal(tt.in)
			if err != nil || string(b) != tt.want {
				t.Fatalf("Marshal = %s, %v; want %s", b, err, tt.want)
			}
			var back State
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatal(err)
			}
			if !back.Deadline.Equal(tt.in.Deadline.Truncate(time.Millisecond)) {
				t.Errorf("deadline read back %s, want %s", back.Deadline, tt.in.Deadline)
			}
		})
	}
	if got := FormatTime(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)); got != "2026-01-02T03:04:05.000+00:00" {
		t.Errorf("FormatTime = %q", got)
	}
}
