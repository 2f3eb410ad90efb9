package main

import (
	"io"
	"maps"
	"strings"
	"testing"

	"github.com/lastcall-dev/lastcall/agent"
)

func TestForeignFlags(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		want    agent.ForeignConfig
		wantErr string
	}{
		{name: "defaults", want: agent.DefaultForeignConfig()},
		{name: "karpenter only, cordon counted, no shutdown",
			args: []string{"--foreign-sources=karpenter", "--foreign-cordon", "--foreign-kubelet-shutdown=false"},
			want: agent.ForeignConfig{Taints: map[string]string{"karpenter.sh/disrupted": "karpenter", "karpenter.sh/disruption": "karpenter"}, Cordon: true}},
		{name: "none but an extra taint",
			args: []string{"--foreign-sources=", "--foreign-taint=example.com/draining=in-house", "--foreign-taint", "example.com/retire = in-house"},
			want: agent.ForeignConfig{Taints: map[string]string{"example.com/draining": "in-house", "example.com/retire": "in-house"}, KubeletShutdown: true}},
		{name: "unknown source", args: []string{"--foreign-sources=karpenter,descheduler"}, wantErr: `foreign source "descheduler"`},
		{name: "lastcall's own taint", args: []string{"--foreign-taint=lastcall.dev/draining=me"}, wantErr: "lastcall sets it itself"},
		{name: "no source", args: []string{"--foreign-taint=example.com/draining"}, wantErr: "want KEY=SOURCE"},
		{name: "a source that is no label value", args: []string{"--foreign-taint=example.com/draining=In House"}, wantErr: "lower-case name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parseFlags(tc.args, func(string) string { return "" }, io.Discard)
			var cfg agent.ForeignConfig
			if err == nil {
				cfg, err = foreignConfig(o)
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(cfg.Taints, tc.want.Taints) || cfg.Cordon != tc.want.Cordon || cfg.KubeletShutdown != tc.want.KubeletShutdown {
				t.Errorf("config %+v, want %+v", cfg, tc.want)
			}
		})
	}
}
