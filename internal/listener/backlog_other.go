//go:build !linux

package listener

import "net"

// backlog is not reported on this platform: the waiting gauge counts only
// the connection Accept holds.
func backlog(net.Listener) int { return 0 }
