package listener

import (
	"net"
	"syscall"
	"unsafe"
)

// backlog reports how many connections wait in ln's accept queue. For a
// listening socket, Linux reports the queue's length in tcp_info's
// tcpi_unacked (what `ss -lt` shows as Recv-Q). Zero when ln is not a TCP
// listener or the call fails: the figure is for metrics only.
func backlog(ln net.Listener) int {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return 0
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0
	}
	var info syscall.TCPInfo
	var errno syscall.Errno
	err = raw.Control(func(fd uintptr) {
		size := uint32(syscall.SizeofTCPInfo)
		_, _, errno = syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.IPPROTO_TCP, syscall.TCP_INFO,
			uintptr(unsafe.Pointer(&info)), uintptr(unsafe.Pointer(&size)), 0)
	})
	if err != nil || errno != 0 {
		return 0
	}
	return int(info.Unacked)
}
