import re,sys,subprocess
# usage: capture.py NETNS FILE.nft > FILE.hex  (root; needs nft and strace)
# Prints, one per line in hex, each netlink message of the batches `nft -f FILE` sends (run in netns ARGV1).
out = subprocess.run(["ip","netns","exec",sys.argv[1],"strace","-xx","-e","trace=sendmsg","-e","write=3","nft","-f",sys.argv[2]],capture_output=True,text=True)
if out.returncode: sys.exit(out.stderr)
calls=[];cur=None
for line in out.stderr.splitlines():
    if line.startswith("sendmsg("): cur=bytearray(); calls.append(cur); continue
    m=re.match(r'\s*\| [0-9a-f]{5}  (.{49})',line)
    if m and cur is not None: cur+=bytes.fromhex(m.group(1).replace(" ",""))
for data in calls:
    off=0
    while off+16<=len(data):
        l=int.from_bytes(data[off:off+4],'little')
        print(data[off:off+l].hex()); off+=(l+3)&~3
