import sys, collections, re
path=sys.argv[1]; top=int(sys.argv[2]) if len(sys.argv)>2 else 40
filt=sys.argv[3] if len(sys.argv)>3 else None
selfc=collections.Counter(); incl=collections.Counter(); total=0
for line in open(path):
    stack,_,n=line.rstrip().rpartition(' ')
    n=int(n)
    if filt and filt not in stack: continue
    frames=stack.split(';')
    total+=n
    norm=[re.sub(r':\d+\)$',')',f) for f in frames]
    selfc[norm[-1]]+=n
    for f in set(norm): incl[f]+=n
print('total samples',total)
print('--- self')
for f,n in selfc.most_common(top): print(f'{100*n/total:5.1f}% {f}')
print('--- inclusive')
for f,n in incl.most_common(top): print(f'{100*n/total:5.1f}% {f}')
