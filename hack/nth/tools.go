//go:build tools

// Package nth pins aws-node-termination-handler's version for make bench,
// which builds its command (github.com/aws/aws-node-termination-handler/cmd)
// as its release build does: CGO_ENABLED=0, -tags nthlinux, -ldflags "-s -w".
package nth

import _ "github.com/aws/aws-node-termination-handler/cmd"
