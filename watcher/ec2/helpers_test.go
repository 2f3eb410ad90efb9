package ec2

import (
	"fmt"
	"net"
)

func sprintf(format string, a ...any) string { return fmt.Sprintf(format, a...) }

func listen(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }
