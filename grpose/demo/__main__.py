from grpose.demo import main

main()
