"""The local rehearsal stack: one AWS emulator per region and the processes behind `starter.py local`."""
