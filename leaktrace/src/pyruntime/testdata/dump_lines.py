# Dumps a code object's line table and the line of every instruction, as the interpreter
# itself says (co_lines() from 3.10, dis.findlinestarts before), for pyruntime/lines.rs's
# tests: python3.X dump_lines.py > lines-3.X.txt
import dis
import sys

SOURCE = '''
def handle_job(job, pool):
    total = 0
    for item in job:
        if item % 2:
            total += item
        else:
            total -= 1
    try:
        conn = pool.connect(
            host="db",
            port=5432,
        )
    except OSError as err:
        raise RuntimeError(err)
    finally:
        total += 1
    return [x * 2 for x in range(total)
            if x]
'''

code = compile(SOURCE, "worker.py", "exec").co_consts[0]
table = code.co_linetable if sys.version_info >= (3, 10) else code.co_lnotab
print(code.co_firstlineno)
print(table.hex())
unit = 2
if sys.version_info >= (3, 10):
    for start, end, line in code.co_lines():
        for offset in range(start, end, unit):
            print(offset, line if line is not None else "-")
else:
    starts = list(dis.findlinestarts(code))
    for offset in range(0, len(code.co_code), unit):
        line = [l for (o, l) in starts if o <= offset][-1]
        print(offset, line)
