from batchsend.cli import main

main()
