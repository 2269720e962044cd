#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
modprobe -d /tmp/umltest/root -a nf_conntrack ip_vs ip_vs_rr ip_vs_wrr ip_vs_sh dummy
ip link add d0 type dummy; ip link set d0 up; ip addr add 10.244.1.0/24 dev d0; ip -6 addr add fd00:10:244::1/64 dev d0
O=/tmp/umltest/cap
mkdir -p $O
st() { name=$1; shift; strace -f -e trace=sendmsg,sendto,recvmsg -xx -s 65536 -o $O/$name.txt "$@"; }
st add_svc ipvsadm -A -t 10.96.0.10:53 -s rr
st add_svc_persist ipvsadm -A -u 10.96.0.10:53 -s wrr -p 10800
st add_svc6 ipvsadm -A -t [fd00::10]:80 -s sh
st add_dest ipvsadm -a -t 10.96.0.10:53 -r 10.244.1.5:8053 -m -w 1
st edit_dest ipvsadm -e -t 10.96.0.10:53 -r 10.244.1.5:8053 -m -w 0
st add_dest6 ipvsadm -a -t [fd00::10]:80 -r [fd00:10:244::5]:8080 -m -w 1
st list ipvsadm -Ln
st del_dest ipvsadm -d -t 10.96.0.10:53 -r 10.244.1.5:8053
st del_svc ipvsadm -D -t 10.96.0.10:53
st set_timeouts ipvsadm --set 900 120 300
st get_timeouts ipvsadm -L --timeout
st flush ipvsadm -C
poweroff -f -d 2>/dev/null || halt -f
